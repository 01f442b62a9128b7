"""The parity limits per precision and the comparisons they apply to (numpy only: the torch-free runtime gates
OpenVINO bf16 against onnxruntime fp32 with them; `pixdeploy.export.parity` gates bundles against PyTorch)."""

from __future__ import annotations

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
