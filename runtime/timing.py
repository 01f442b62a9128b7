"""Latency samples: callables timed in alternation, so machine noise hits every side alike, and their percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def percentiles(samples: Sequence[float]) -> dict:
    """Seconds -> p50/p90/p99 in milliseconds and the sample count."""
    a = np.asarray(samples, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def interleaved(fns: dict[str, Callable[[], object]], iters: int, warmup: int = 3, block: int = 1) -> dict:
    """Time each callable ``iters`` times, alternating between them in runs of ``block`` calls, so that
    machine noise hits every side alike; returns the raw samples (seconds) per name. A block > 1 keeps
    a small kernel's caches warm, as in real use, when its neighbour is large enough to evict them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, iters // block)):
        for name, fn in fns.items():
            for _ in range(block):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return samples
