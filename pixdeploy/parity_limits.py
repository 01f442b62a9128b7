"""The parity limits per precision, the comparisons they apply to, and the result of a gate with the one record
every bundle variant keeps of it (numpy only: the torch-free runtime gates OpenVINO bf16 against onnxruntime fp32
with them; `pixdeploy.export.parity` gates bundles against PyTorch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Why these numbers: fp32 onnxruntime differs from eager PyTorch only by kernel summation order, so
# embeddings and logits agree to ~1e-6 relative; greedy decoding must then pick the very same tokens.
# fp16 and int8 variants are gated on direction (cosine) rather than absolute error: their errors scale
# with the activations; a row lists only the checks that apply to it. fp16 keeps ~3 decimal digits, so
# window embeddings point the same way to 1e-3 and greedy answers on real images must not change; int8
# keeps ~2, so 0.99, and its greedy answers may differ on an image or two where the top two logits are
# within the quantization noise (the demo also holds its held-out reading within 2 points of fp32).
THRESHOLDS = {
    "fp32": {"embed_max_abs": 1e-3, "embed_cosine_min": 0.99999, "logits_max_abs": 1e-3,
             "greedy_match_min": 1.0},
    "fp16": {"embed_cosine_min": 0.999, "logits_cosine_min": 0.999, "greedy_match_min": 1.0},
    "int8": {"embed_cosine_min": 0.99, "logits_cosine_min": 0.99, "greedy_match_min": 0.8},
}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    diff = np.abs(a64 - b64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-30)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float((diff / (np.abs(b64) + 1e-6)).max()), "cosine_min": float(cos.min())}


def answer_match(got: np.ndarray, ref: np.ndarray) -> float:
    """Share of rows of greedy tokens (B, steps) whose answer equals the reference's: every token up to
    and including the reference's first `</s>`, or all of them when it never stops."""
    from pixdeploy.config import EOS_ID

    lengths = [int(np.argmax(r == EOS_ID)) + 1 if (r == EOS_ID).any() else len(r) for r in ref]
    return float(np.mean([np.array_equal(g[:n], r[:n]) for g, r, n in zip(got, ref, lengths)]))


@dataclass
class Check:
    name: str
    value: float
    threshold: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        ok = self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        return bool(ok) and bool(np.isfinite(self.value))


@dataclass
class ParityResult:
    precision: str
    images: int
    steps: int
    checks: list[Check] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"precision": self.precision, "images": self.images, "decode_steps": self.steps,
                "passed": bool(self), "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
                "stats": self.stats}

    def record(self):
        """The bundle's record of this result (`ParityRecord`: precision, passed, every check's value)."""
        from pixdeploy.runtime.bundle.records import ParityRecord

        return ParityRecord(self.precision, bool(self), tuple((c.name, float(c.value)) for c in self.checks))

    def table(self) -> str:
        rows = [f"{'check':<20}{'value':>14}{'limit':>14}  result"]
        for c in self.checks:
            rel = ">=" if c.higher_is_better else "<="
            rows.append(f"{c.name:<20}{c.value:>14.3g}{rel:>4}{c.threshold:>10.3g}  {'pass' if c.passed else 'FAIL'}")
        return "\n".join(rows)
