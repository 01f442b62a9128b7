"""Token sampling in numpy: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pixdeploy.config import EOS_ID
from pixdeploy.errors import PixdeployError

MAX_SEED = 2**63 - 1  # numpy's generators take seeds 0..2**63-1 here (a negative one raises deep inside)


def check_sampling(temperature: float, top_k: int, top_p: float, seed: int = 0) -> None:
    """Refuse settings that pass naive range checks but break sampling (NaN compares false with all)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise PixdeployError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise PixdeployError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and math.isfinite(top_p) and 0 < top_p <= 1):
        raise PixdeployError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise PixdeployError(f"top_k must be an integer >= 0, got {top_k!r}")


@dataclass(frozen=True)
class Sampling:
    """How generation picks each token and when it stops, for the runtime's loop and PyTorch's reference
    (`pixdeploy.generation.generate`) alike: temperature 0 is greedy (top_k and top_p then unused); ``stop=None``
    runs all ``max_new_tokens`` (fewer where the context ends first). Checked when made."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: Sequence[int] | None = (EOS_ID,)
    seed: int = 0

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p, self.seed)


GREEDY = Sampling()


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """(B, V) logits -> (B,) int64 ids. temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1).astype(np.int64)
    rng = rng or np.random.default_rng()
    # Shift before dividing: every value is <= 0, so a tiny temperature sends the rest to -inf (exp: 0) and
    # the largest stays 0, never inf - inf (NaN) as dividing first would give at temperature 1e-308.
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # overflowing to -inf is the intent: those tokens get probability 0
        z = (z - z.max(-1, keepdims=True)) / temperature
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
