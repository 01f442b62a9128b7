"""Timing helpers for the benchmarks: percentiles of repeated runs, baseline and candidate interleaved
so that machine noise hits both alike. Results are ratios measured in the same run, never absolutes
alone."""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np


def percentiles(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def interleaved(fns: dict, iters: int, warmup: int = 3, block: int = 1) -> dict:
    """Time each callable ``iters`` times, alternating between them in runs of ``block`` calls;
    returns percentiles per name. A block > 1 keeps a small kernel's caches warm, as in real use,
    when its neighbour in the comparison is large enough to evict them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(max(1, iters // block)):
        for name, fn in fns.items():
            for _ in range(block):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return {name: percentiles(s) for name, s in samples.items()}


def machine() -> dict:
    import onnxruntime
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def write(name: str, result: dict) -> None:
    out = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
