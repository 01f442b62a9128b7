"""CPU decode, every path side by side: ms per token and tokens/s against today's plain fp32 decoder, in one run.

    python -m benchmarks.cpu_decode --preset small --batches 1 8 --contexts 32 128 256 512

Paths (one seeded model, the same weights in every graph):
- ``plain-fp32``: the bundle's plain decoder (fixed KV buffer written by ScatterElements), run as `Pipeline` runs
  it: the cache goes in and comes out of every step as numpy arrays. The baseline.
- ``plain-int8-dynamic``: the same graph with onnxruntime's dynamic int8 matmuls (an int8-cpu scheme).
- ``fused-fp32``, ``fused-int8``, ``fused-int4``: the fused onnxruntime decoder (`pixdeploy.export.fused_decoder`),
  fp32 or MatMulNBits weights, run through `FusedDecoderRunner` (its KV buffers written in place).

Each cell is one-token decode steps after a real prefill to the context length, all paths interleaved in runs of
`BLOCK` calls so noise hits them alike; greedy agreement is 16 greedy tokens from a real prompt, compared with
plain-fp32's token by token (the seeded, untrained model's logits are near ties: held-out reading of a trained
model is `benchmarks.cpu_decode_reading`'s).
Threads: onnxruntime's default (every core). Results: ``benchmarks/results/cpu_decode.json`` (``$OUT`` if set).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from pixdeploy.export.fused_decoder import build, quantize_weights, unsupported
from pixdeploy.export.onnx_export import export_graph, graph_specs
from pixdeploy.export.quantize import CPU_SCHEMES, make_cpu_scheme, weight_matmuls
from pixdeploy.runtime.backends import FusedDecoderRunner, OnnxRuntimeRunner
from pixdeploy.runtime.bundle import GraphSignature

from benchmarks.timing import interleaved, machine, write
from pixdeploy.config import preset
from pixdeploy.cpu import cpu_class
from pixdeploy.model import PixTokenLM

BASELINE = "plain-fp32"
# Calls alternate between paths in runs of this many, as a decode loop runs one path back to back: each path's
# weights are as warm in the caches as they are when it generates, and noise still hits every path alike.
BLOCK = 10


def make_paths(model, folder: Path) -> dict:
    cfg = model.cfg
    spec = graph_specs(cfg)[1]
    signature = GraphSignature.from_dict(spec.to_dict())
    pairs = list(signature.cache)
    plain = folder / "plain.onnx"
    export_graph(model, spec, plain)
    make_cpu_scheme(CPU_SCHEMES["dynamic"], plain, folder / "plain-int8.onnx",
                    weight_matmuls(onnx.load(str(plain))), None)
    fused = build(model)
    graphs = {"fused-fp32": fused, "fused-int8": quantize_weights(fused, 8), "fused-int4": quantize_weights(fused, 4)}
    runners = {BASELINE: OnnxRuntimeRunner.open(plain, "cpu"),
               "plain-int8-dynamic": OnnxRuntimeRunner.open(folder / "plain-int8.onnx", "cpu")}
    for name, proto in graphs.items():
        onnx.save(proto, str(folder / f"{name}.onnx"))
        runners[name] = FusedDecoderRunner.open(folder / f"{name}.onnx", signature, pairs, cfg)
    return runners, pairs


def step_fn(runner, pairs, prompt: np.ndarray, step: np.ndarray):
    """Prefill ``prompt`` once, then a callable for one decode step at the position after it."""
    B, T = prompt.shape[:2]
    cache = {p.past: np.zeros([B if isinstance(d, str) else d for d in p.shape], np.float32) for p in pairs}
    out = runner.infer({"embeds": prompt, "input_pos": np.arange(T), **cache})
    feed = {"embeds": step, "input_pos": np.array([T]), **{p.past: out[p.present] for p in pairs}}
    return lambda: runner.infer(feed)


def greedy(runner, pairs, table: np.ndarray, prompt: np.ndarray, n: int) -> list[int]:
    B, T = prompt.shape[:2]
    cache = {p.past: np.zeros([B if isinstance(d, str) else d for d in p.shape], np.float32) for p in pairs}
    out = runner.infer({"embeds": prompt, "input_pos": np.arange(T), **cache})
    tokens = []
    for i in range(n):
        t = int(out["logits"][0].argmax())
        tokens.append(t)
        feed = {"embeds": table[[t % len(table)]][None], "input_pos": np.array([T + i]),
                **{p.past: out[p.present] for p in pairs}}
        out = runner.infer(feed)
    return tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 128, 256, 512])
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    cfg = preset(args.preset).replace(max_seq_len=max(args.contexts) + 32, text_vocab=1024)
    if unsupported(cfg):
        raise SystemExit(f"preset {args.preset}: {unsupported(cfg)}")
    torch.manual_seed(0)
    model = PixTokenLM(cfg).eval()
    table = model.tok_emb.weight.detach().float().numpy()
    rng = np.random.default_rng(0)
    result = {"preset": args.preset, "machine": {**machine(), "isa": cpu_class()}, "cells": {}, "greedy": {}}
    with tempfile.TemporaryDirectory() as d:
        runners, pairs = make_paths(model, Path(d))
        prompt = table[rng.integers(6, cfg.text_vocab, 40)][None].astype(np.float32)
        reference = greedy(runners[BASELINE], pairs, table, prompt, 16)
        for name, runner in runners.items():
            tokens = greedy(runner, pairs, table, prompt, 16)
            same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(reference))
            result["greedy"][name] = {"tokens_equal_to_plain_fp32": same, "of": len(reference)}
        for batch in args.batches:
            for ctx in args.contexts:
                ids = rng.integers(6, cfg.text_vocab, (batch, ctx + 1))
                prompt, step = table[ids[:, :ctx]].astype(np.float32), table[ids[:, ctx:]].astype(np.float32)
                fns = {name: step_fn(r, pairs, prompt, step) for name, r in runners.items()}
                rows = interleaved(fns, args.iters, block=BLOCK)
                base = rows[BASELINE]["p50_ms"]
                cell = {name: {**row, "tokens_per_s": round(batch * 1000 / row["p50_ms"], 1),
                               "ratio_vs_plain_fp32_p50": round(base / row["p50_ms"], 3)} for name, row in rows.items()}
                result["cells"][f"batch{batch}_ctx{ctx}"] = cell
                print(f"batch {batch}, context {ctx}: " + ", ".join(
                    f"{n} {c['p50_ms']:.2f} ms ({c['ratio_vs_plain_fp32_p50']:.2f}x)" for n, c in cell.items()),
                    flush=True)
    write("cpu_decode", result)
    print(f"\n{args.preset}, {result['machine']['isa']}, onnxruntime {result['machine']['onnxruntime']}")
    print(f"{'path':<20}{'greedy = fp32':>14}" + "".join(f"{k:>20}" for k in result["cells"]))
    for name in runners:
        g = result["greedy"][name]
        cells = result["cells"].values()
        print(f"{name:<20}{g['tokens_equal_to_plain_fp32']:>10}/{g['of']:<3}" + "".join(
            f"{c[name]['p50_ms']:>8.2f}ms {c[name]['ratio_vs_plain_fp32_p50']:>6.2f}x  " for c in cells))


if __name__ == "__main__":
    main()
