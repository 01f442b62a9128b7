"""python -m benchmarks.attention_cpu [--preset small] [--batch 8]

The image encoder's window attention on onnxruntime CPU, alone: the kernel the bundles use (the opset-23
``Attention`` operator with the window's boolean mask) against onnxruntime's other CPU attention kernels
given the same mask, at one preset's shapes (batch x windows, heads, window^2 pixels, head size), on the
windows of real letterboxed photos. Each candidate is checked against the PyTorch reference on every
non-padding query (padding outputs never reach a window summary) and timed interleaved with the shipped
kernel; ratio = shipped p50 / candidate p50.

The last row runs onnxruntime's flash-attention path, which it takes only without any mask: it computes
something else (no causality, no padding) and is there as a bound on what a fused CPU kernel gives.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from onnx import TensorProto, helper
from pixdeploy.export.parity import default_parity_images

from benchmarks.timing import cpu_session, interleaved, machine, write
from pixdeploy.config import preset
from pixdeploy.folding import prepare_batch
from pixdeploy.model import PixTokenLM, window_attention_sdpa


def single_node(node, inputs: dict):
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.bool_): TensorProto.BOOL,
             np.dtype(np.int32): TensorProto.INT32}
    graph = helper.make_graph([node], "attention",
                              [helper.make_tensor_value_info(n, types[a.dtype], a.shape) for n, a in inputs.items()],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return cpu_session(model.SerializeToString())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()

    cfg = preset(args.preset)
    real = default_parity_images()
    images, sizes = prepare_batch([real[i % len(real)] for i in range(args.batch)], cfg.image_size)
    _, valid, _ = PixTokenLM(cfg).pixel_tokens(torch.from_numpy(images), torch.from_numpy(sizes))
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.dim // cfg.n_heads
    NW, P = valid.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(NW, h, P, D, generator=g) for h in (H, K, K))
    ref = window_attention_sdpa(q, k, v, valid).numpy()

    idx = np.arange(P)
    causal, eye = idx[None, :] <= idx[:, None], idx[None, :] == idx[:, None]
    keep = valid.numpy()
    mask = causal & (keep[:, None, None, :] | eye)  # (NW, 1, P, P): the shipped op's mask
    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    # MultiHeadAttention takes (B, S, H*D) and as many K/V heads as query heads.
    q3 = qn.transpose(0, 2, 1, 3).reshape(NW, P, H * D).copy()
    k3, v3 = (np.repeat(t, H // K, 1).transpose(0, 2, 1, 3).reshape(NW, P, H * D).copy() for t in (kn, vn))
    from_3d = lambda o: o.reshape(NW, P, H, D).transpose(0, 2, 1, 3)  # noqa: E731
    mha = dict(domain="com.microsoft", num_heads=H)
    candidates = {
        "Attention, bool mask (shipped)": (helper.make_node("Attention", ["q", "k", "v", "m"], ["out"]),
                                           dict(q=qn, k=kn, v=vn, m=mask), None),
        "Attention, additive mask": (helper.make_node("Attention", ["q", "k", "v", "m"], ["out"]),
                                     dict(q=qn, k=kn, v=vn, m=np.where(mask, 0, -np.inf).astype(np.float32)), None),
        "MultiHeadAttention, attention_bias": (
            helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "b"], ["out"], **mha),
            dict(q=q3, k=k3, v=v3, b=np.where(mask, 0, -1e4).astype(np.float32)), from_3d),
        "MultiHeadAttention, causal + key padding": (
            helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "kpm"], ["out"], unidirectional=1, **mha),
            dict(q=q3, k=k3, v=v3, kpm=keep.astype(np.int32)), from_3d),
        "MultiHeadAttention, no mask (flash; wrong)": (
            helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], **mha), dict(q=q3, k=k3, v=v3), from_3d),
    }
    sessions, errors = {}, {}
    query_ok = np.broadcast_to(keep[:, None, :, None], ref.shape)
    for name, (node, feed, to_ref_layout) in candidates.items():
        s = single_node(node, feed)
        out = s.run(None, feed)[0]
        out = to_ref_layout(out) if to_ref_layout else out
        errors[name] = float(np.abs(np.where(query_ok, out - ref, 0)).max())
        sessions[name] = (s, feed)
    times = interleaved({n: (lambda s=s, f=f: s.run(None, f)) for n, (s, f) in sessions.items()}, args.iters)
    base = times["Attention, bool mask (shipped)"]["p50_ms"]
    rows = {n: {**times[n], "max_abs_err_valid_queries": errors[n], "ratio_p50": base / times[n]["p50_ms"]}
            for n in candidates}
    shape = {"windows": NW, "heads": H, "kv_heads": K, "pixels": P, "head_size": D}
    write("attention_cpu", {"preset": args.preset, "batch": args.batch, "shape": shape, "machine": machine(),
                            "kernels": rows})
    print(f"{args.preset}, batch {args.batch}: {NW} windows x {H} heads x {P} pixels x {D}; "
          "ratio = shipped p50 / kernel p50, timed interleaved in this run")
    print(f"{'kernel':44}{'p50':>9}{'p90':>9}{'p99':>9}{'ratio':>7}{'max err':>10}")
    for n, r in rows.items():
        print(f"{n:44}{r['p50_ms']:>7.1f}ms{r['p90_ms']:>7.1f}ms{r['p99_ms']:>7.1f}ms{r['ratio_p50']:>6.2f}x"
              f"{r['max_abs_err_valid_queries']:>10.1e}")


if __name__ == "__main__":
    main()
