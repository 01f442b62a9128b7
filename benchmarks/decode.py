"""Decode with the KV cache: per-token time across context lengths, and against recomputation.

    python -m benchmarks.decode --preset small --contexts 32 128 256 512

Exports the decoder of a preset with a 640-token context (seeded weights), fills the cache by a real
prefill of real-valued embeddings, and times one-token decode steps at each context length. The
baseline is recomputing the whole sequence without a cache (one prefill of context + 1 tokens), timed
in the same run. Goals: flat per-token time, at least 10x faster than recomputation at 256.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pixdeploy.export.onnx_export import export_graph, graph_specs

from benchmarks.timing import interleaved, machine, write
from pixdeploy.config import preset
from pixdeploy.model import PixTokenLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 128, 256, 512])
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    cfg = preset(args.preset).replace(max_seq_len=max(args.contexts) + 128, text_vocab=1024)
    torch.manual_seed(0)
    model = PixTokenLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "decoder.onnx"
        export_graph(model, graph_specs(cfg)[1], path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    table = model.tok_emb.weight.detach().numpy()
    rng = np.random.default_rng(0)
    seq = table[rng.integers(6, cfg.text_vocab, max(args.contexts) + 1)][None].astype(np.float32)
    shape = (1, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
    empty = {f"past_{kv}_{i}": np.zeros(shape, np.float32) for i in range(cfg.n_layers) for kv in "kv"}

    def run(embeds, start, cache):
        out = sess.run(None, {"embeds": embeds, "input_pos": np.arange(start, start + embeds.shape[1]), **cache})
        return out

    names = [o.name for o in sess.get_outputs()]
    steps = {}
    for ctx in args.contexts:
        out = run(seq[:, :ctx], 0, empty)  # a real prefill fills the cache
        cache = {n.replace("present_", "past_"): v for n, v in zip(names, out) if n.startswith("present_")}
        steps[ctx] = lambda ctx=ctx, cache=cache: run(seq[:, ctx : ctx + 1], ctx, cache)
    # Flatness: the cached steps of every context, interleaved with one another.
    rows = interleaved({f"cached_step_{ctx}": fn for ctx, fn in steps.items()}, args.iters)
    flat = rows[f"cached_step_{max(args.contexts)}"]["p50_ms"] / rows[f"cached_step_{min(args.contexts)}"]["p50_ms"]
    result = {"preset": args.preset, "machine": machine(), "cached_steps": rows, "flatness_p50": flat}
    if 256 in steps:
        # Against recomputation: the cached step at 256 vs one prefill of 257 tokens, in alternating
        # blocks of 10 calls (each side runs back to back, as it would when generating).
        vs = interleaved({"cached_step_256": steps[256], "recompute_257": lambda: run(seq[:, :257], 0, empty)},
                         args.iters * 5, block=10)
        result["vs_recompute_at_256"] = vs
        result["speedup_vs_recompute_at_256_p50"] = vs["recompute_257"]["p50_ms"] / vs["cached_step_256"]["p50_ms"]
    write("decode", result)
    print(f"{'context':>8}{'step p50':>11}{'p90':>9}{'p99':>9}")
    for ctx in args.contexts:
        c = rows[f"cached_step_{ctx}"]
        print(f"{ctx:>8}{c['p50_ms']:>9.2f}ms{c['p90_ms']:>7.2f}ms{c['p99_ms']:>7.2f}ms")
    print(f"per-token time at {max(args.contexts)} / at {min(args.contexts)}: {flat:.2f}x")
    if 256 in steps:
        vs = result["vs_recompute_at_256"]
        print(f"at 256: cached step {vs['cached_step_256']['p50_ms']:.2f}ms, recompute "
              f"{vs['recompute_257']['p50_ms']:.2f}ms (p50): {result['speedup_vs_recompute_at_256_p50']:.1f}x faster")

if __name__ == "__main__":
    main()
