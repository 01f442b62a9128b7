"""Timing helpers for the benchmarks: percentiles of repeated runs, baseline and candidate interleaved
so that machine noise hits both alike. Results are ratios measured in the same run, never absolutes
alone."""

from __future__ import annotations

import json
import os
import platform

from pixdeploy.runtime import bench
from pixdeploy.runtime.bench import percentiles


def interleaved(fns: dict, iters: int, warmup: int = 3, block: int = 1) -> dict:
    """`pixdeploy.runtime.bench.interleaved` (calls alternate in runs of ``block``), as percentiles per name."""
    return {name: percentiles(s) for name, s in bench.interleaved(fns, iters, warmup, block).items()}


def cpu_session(model):
    """An onnxruntime CPU session on an ONNX file path or serialized model bytes, its warnings silenced."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


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
