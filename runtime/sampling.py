"""Token sampling in numpy: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import numpy as np


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """(B, V) logits -> (B,) int64 ids. temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1).astype(np.int64)
    rng = rng or np.random.default_rng()
    z = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth = np.sort(z, axis=-1)[:, -min(top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, -1)
        keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < top_p  # smallest set reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], dtype=np.int64)
