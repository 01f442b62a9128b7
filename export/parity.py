"""The parity gate: does a bundle answer as the PyTorch model does, on real images?

Per stage — encoder embeddings, prefill logits, greedy tokens over N decode steps — against thresholds
kept in one table per precision. The result is truthy on pass and lists every failing check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pixdeploy.errors import PixdeployError

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


class ParityError(PixdeployError):
    """A bundle failed its parity gate."""


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

    def table(self) -> str:
        rows = [f"{'check':<20}{'value':>14}{'limit':>14}  result"]
        for c in self.checks:
            rel = ">=" if c.higher_is_better else "<="
            rows.append(f"{c.name:<20}{c.value:>14.3g}{rel:>4}{c.threshold:>10.3g}  {'pass' if c.passed else 'FAIL'}")
        return "\n".join(rows)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    diff = np.abs(a64 - b64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-30)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float((diff / (np.abs(b64) + 1e-6)).max()), "cosine_min": float(cos.min())}


@torch.no_grad()
def check_parity(model, pipeline, images: list, precision: str = "fp32", steps: int = 32) -> ParityResult:
    """Compare a loaded bundle (``pipeline``) with the PyTorch ``model`` on ``images`` (files or Pillow)."""
    from pixdeploy.generation import generate, prefill

    if precision not in THRESHOLDS:
        raise PixdeployError(f"no parity thresholds for precision {precision!r}")
    limits = THRESHOLDS[precision]
    cfg = model.cfg
    rgb, sizes = pipeline.preprocess(images)
    ids = pipeline.prompt_ids()
    steps = min(steps, cfg.max_seq_len - len(ids))

    ref_embed = model.encode_images(torch.from_numpy(rgb), torch.from_numpy(sizes)).numpy()
    got_embed = pipeline.embed_letterboxed(rgb, sizes)
    e = compare(got_embed, ref_embed)

    tokens = torch.tensor([ids] * len(rgb))
    ref_logits, _ = prefill(model, tokens, torch.from_numpy(rgb), torch.from_numpy(sizes))
    got_logits, _ = pipeline.prefill(got_embed, ids)
    lg = compare(got_logits, ref_logits.numpy())

    # Greedy over `steps` tokens, each side feeding back its own choices. An image matches when the
    # answer a user gets is the same: every token up to and including the reference's first `</s>`
    # (all `steps` when it never stops). Tokens after `</s>` are never shown and, past what the model
    # was trained on, sit in near-ties that any rounding flips; they are still counted, for the record,
    # in greedy_token_agreement.
    ref = torch.stack(list(generate(model, tokens, torch.from_numpy(rgb), torch.from_numpy(sizes),
                                    max_new_tokens=steps, stop=None)), 1).numpy()
    got = np.stack(list(pipeline.decode_steps(got_embed, ids, max_new_tokens=steps, stop=None)), 1)
    match = answer_match(got, ref)

    result = ParityResult(precision, len(rgb), steps, stats={"embeddings": e, "prefill_logits": lg,
                                                             "greedy_token_agreement": float((got == ref).mean())})
    measured = [  # (check, value, its key in THRESHOLDS, higher is better); a precision's row picks its checks
        ("embed_max_abs", e["max_abs"], "embed_max_abs", False),
        ("embed_cosine_min", e["cosine_min"], "embed_cosine_min", True),
        ("logits_max_abs", lg["max_abs"], "logits_max_abs", False),
        ("logits_cosine_min", lg["cosine_min"], "logits_cosine_min", True),
        ("greedy_match", match, "greedy_match_min", True),
    ]
    result.checks = [Check(name, value, limits[key], higher) for name, value, key, higher in measured if key in limits]
    return result


def answer_match(got: np.ndarray, ref: np.ndarray) -> float:
    """Share of rows of greedy tokens (B, steps) whose answer equals the reference's: every token up to
    and including the reference's first `</s>`, or all of them when it never stops."""
    from pixdeploy.config import EOS_ID

    lengths = [int(np.argmax(r == EOS_ID)) + 1 if (r == EOS_ID).any() else len(r) for r in ref]
    return float(np.mean([np.array_equal(g[:n], r[:n]) for g, r, n in zip(got, ref, lengths)]))


def default_parity_images() -> list:
    """Real photographs and handwriting shipped with scikit-learn (`pixdeploy.sample_images`)."""
    from pixdeploy.sample_images import sample_images

    return sample_images()
