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
    cfg = preset(args.preset).replace(max_seq_len=max(args.contexts) + 128)
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
    rows = {}
    for ctx in args.contexts:
        out = run(seq[:, :ctx], 0, empty)  # real prefill fills the cache
        cache = {n.replace("present_", "past_"): v for n, v in zip(names, out) if n.startswith("present_")}
        fns = {"cached_step": lambda ctx=ctx, cache=cache: run(seq[:, ctx : ctx + 1], ctx, cache)}
        if ctx == 256 or ctx == max(args.contexts):
            fns["recompute"] = lambda ctx=ctx: run(seq[:, : ctx + 1], 0, empty)
        rows[ctx] = interleaved(fns, args.iters)
    flat = rows[max(args.contexts)]["cached_step"]["p50_ms"] / rows[min(args.contexts)]["cached_step"]["p50_ms"]
    result = {"preset": args.preset, "machine": machine(), "contexts": rows, "flatness_p50": flat}
    if 256 in rows:
        at = rows[256]
        result["speedup_vs_recompute_at_256_p50"] = at["recompute"]["p50_ms"] / at["cached_step"]["p50_ms"]
    write("decode", result)
    print(f"{'context':>8}{'step p50':>11}{'p90':>9}{'p99':>9}{'recompute p50':>15}")
    for ctx, r in rows.items():
        c = r["cached_step"]
        rec = f"{r['recompute']['p50_ms']:>13.2f}ms" if "recompute" in r else ""
        print(f"{ctx:>8}{c['p50_ms']:>9.2f}ms{c['p90_ms']:>7.2f}ms{c['p99_ms']:>7.2f}ms{rec}")
    print(f"per-token time at {max(args.contexts)} / at {min(args.contexts)}: {flat:.2f}x")
    if 256 in rows:
        print(f"cached vs recompute at 256 (p50): {result['speedup_vs_recompute_at_256_p50']:.1f}x faster")


if __name__ == "__main__":
    main()
