"""Timing on a CUDA device or the CPU, the way DESIGN.md §7 asks: warm-up, CUDA events around every call,
medians (p50/p90/p99) of many, inputs rotated through several real buffers so no call finds the previous
one's data in cache, and the device's own peaks measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from benchmarks.timing import percentiles


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable, inputs: Sequence, device: torch.device, iters: int, warmup: int) -> dict:
    """Call ``fn(inputs[i % len(inputs)])`` ``iters`` times after ``warmup`` calls; per-call times."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for i, (start, end) in enumerate(events):
            start.record()
            fn(inputs[i % len(inputs)])
            end.record()
        torch.cuda.synchronize(device)
        samples = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        samples = []
        for i in range(iters):
            t = time.perf_counter()
            fn(inputs[i % len(inputs)])
            samples.append(time.perf_counter() - t)
    return percentiles(samples)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, iters: int, warmup: int) -> dict:
    """Square n x n x n matmuls on three rotated operand pairs: TFLOP/s at p50."""
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = [(torch.randn(n, n, device=device, generator=gen).to(dtype),
              torch.randn(n, n, device=device, generator=gen).to(dtype)) for _ in range(3)]
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = time_calls(lambda ab: torch.matmul(*ab, out=out), pairs, device, iters, warmup)
    tflops = 2 * n**3 / (t["p50_ms"] / 1e3) / 1e12
    return {**t, "n": n, "dtype": str(dtype).removeprefix("torch."), "tflops_p50": tflops}


def copy_bandwidth(device: torch.device, nbytes: int, iters: int, warmup: int) -> dict:
    """Device-to-device copies of ``nbytes`` from two rotated sources; GB/s counts the bytes read and
    written (what a kernel streaming weights can hope for)."""
    n = nbytes // 4
    sources = [torch.rand(n, device=device) for _ in range(2)]
    dst = torch.empty(n, device=device)
    t = time_calls(lambda src: dst.copy_(src), sources, device, iters, warmup)
    return {**t, "bytes": 4 * n, "gbps_p50": 2 * 4 * n / (t["p50_ms"] / 1e3) / 1e9}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def cuda_graphed(fn, static_inputs: list[torch.Tensor]):
    """Capture ``fn(*static_inputs)`` in a CUDA graph; the returned callable copies new inputs into the
    static buffers and replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compiles Triton kernels, autotunes, warms the allocator
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)

    def replay(inputs):
        for dst, src in zip(static_inputs, inputs):
            if dst is not src:
                dst.copy_(src)
        graph.replay()
        return out

    return replay
