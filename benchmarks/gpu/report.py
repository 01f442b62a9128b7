"""What the suite prints last, and the goals it checks its own numbers against."""

from __future__ import annotations

import json
import math


def _best(rows, **where):
    hits = [r for r in rows if "error" not in r and "p50_ms" in r and all(r.get(k) in v for k, v in where.items())]
    return hits


def goals(report: dict) -> dict:
    """The targets a GPU run is held to; each says its value, its limit and whether it was met, or why it
    was not measured."""
    s, out = report["stages"], {}
    rows = s.get("image_block", {}).get("rows", [])
    half = _best(rows, batch={8}, dtype={"bf16", "fp16"})
    out["image_block_batch8_fraction_of_peak"] = (
        {"value": max(r["fraction_of_peak"] for r in half), "min": 0.5,
         "variant": max(half, key=lambda r: r["fraction_of_peak"])["variant"]}
        if half else {"not_measured": "no bf16/fp16 image-block run at batch 8 (needs CUDA)"})
    dec = _best(s.get("decoder", {}).get("rows", []), batch={1}, variant={"decode cuda_graph"})
    out["decode_batch1_cuda_graph_vs_weight_streaming"] = (
        {"value": dec[0]["per_token_vs_bound"], "max": 3.0} if dec else {"not_measured": "needs CUDA graphs (CUDA)"})
    wa = s.get("window_attention", {}).get("rows", [])
    for dtype in ("bf16", "fp16"):
        tri = _best(wa, dtype={dtype}, variant={"triton"})
        sdpa = [r for r in _best(wa, dtype={dtype})
                if r["variant"].startswith("sdpa") and "one-query" not in r["variant"]]
        key = f"triton_{dtype}_vs_fastest_masked_sdpa"
        if tri and sdpa:
            fastest = min(sdpa, key=lambda r: r["p50_ms"])
            out[key] = {"value": tri[0]["p50_ms"] / fastest["p50_ms"], "max": 1.0, "fastest_sdpa": fastest["variant"],
                        "error_ratio_vs_that_sdpa": tri[0]["max_abs_err_vs_fp32"]
                        / max(fastest["max_abs_err_vs_fp32"], 1e-12)}
        else:
            out[key] = {"not_measured": "needs the Triton kernel on CUDA"}
    train = s.get("train", {}).get("runs", {}).get("bf16")
    out["train_bf16_finite"] = ({"value": train["all_finite"], "pixel_tokens_per_s": train["pixel_tokens_per_s"],
                                 "fraction_of_peak": train["fraction_of_peak"]}
                                if train else {"not_measured": "bf16 training runs on CUDA only"})
    for g in out.values():
        if "value" in g:
            v = g["value"]
            g["met"] = bool(v) if isinstance(v, bool) else bool(
                math.isfinite(v) and (v >= g["min"] if "min" in g else v <= g["max"]))
    return out


def summary(report: dict) -> str:
    """The short table printed last: one line per headline number."""
    s = report["stages"]
    lines = [f"{report['device_name']} — preset {report['preset']}{' (smoke)' if report['smoke'] else ''}",
             f"{'stage':<17}{'what':<46}{'p50 ms':>10}  result"]

    def row(stage, what, ms, result):
        ms_txt = f"{ms:>10.3f}" if isinstance(ms, float) and math.isfinite(ms) else f"{'-':>10}"
        lines.append(f"{stage:<17}{what[:45]:<46}{ms_txt}  {result}")

    for name, stage in s.items():
        if "skipped" in stage and len(stage) == 1:
            row(name, "skipped", None, stage["skipped"])
    if "matmul" in s.get("peaks", {}):
        for dt, m in s["peaks"]["matmul"].items():
            row("peaks", f"matmul {dt} n={m['n']}", m["p50_ms"], f"{m['tflops_p50']:.3g} TFLOP/s")
        c = s["peaks"]["copy"]
        row("peaks", f"copy {c['bytes'] >> 20} MiB", c["p50_ms"], f"{c['gbps_p50']:.3g} GB/s")
    for prec, r in s.get("train", {}).get("runs", {}).items():
        row("train", f"{prec} batch {r['batch']}, {r['steps']} steps", r["p50_ms"],
            f"loss {r['loss_first']:.2f}->{r['loss_last']:.2f} finite={r['all_finite']} "
            f"{r['pixel_tokens_per_s']:,.0f} px tok/s {r['tflops']:.3g} TFLOP/s ({r['fraction_of_peak']:.0%} of peak)")
    for r in s.get("image_block", {}).get("rows", []):
        res = r.get("error") or f"{r['tflops']:.3g} TFLOP/s, {r['fraction_of_peak']:.0%} of {r['peak_dtype']} peak"
        row("image_block", f"batch {r['batch']} {r['variant']}", r.get("p50_ms"), res)
    wa = s.get("window_attention", {})
    for r in wa.get("rows", []):
        res = r.get("error") or (f"max err {r['max_abs_err_vs_fp32']:.1e}" if "max_abs_err_vs_fp32" in r else "")
        row("window_attn", f"{r['dtype']} {r['variant']}", r.get("p50_ms"), res)
    if wa.get("rows"):
        row("window_attn", "SDPA backends that ran (dtypes)", None, json.dumps(wa["sdpa_backends_that_ran"]))
    for r in s.get("decoder", {}).get("rows", []):
        extra = f", {r['per_token_vs_bound']:.2f}x the weight-streaming bound" if "per_token_vs_bound" in r else ""
        if "greedy_matches_eager" in r:
            extra += f", greedy same as eager: {r['greedy_matches_eager']}"
        row("decoder", f"batch {r['batch']} {r['variant']}", r["p50_ms"], f"{r['tokens_per_s']:,.0f} tok/s{extra}")
    for prec in ("bf16", "fp16"):
        r = s.get("parity", {}).get(prec)
        if r:
            row("parity", f"{prec} vs fp32", None,
                f"embed cos {r['embed_cosine_min']:.5f}, logits max|d| {r['logits_max_abs']:.3g}, "
                f"greedy {r['greedy_token_agreement']:.0%} tokens / {r['greedy_sequences_identical']:.0%} seqs")
    for g, r in s.get("onnx", {}).get("graphs", {}).items():
        row("onnx", f"{g} onnxruntime {'+'.join(p[:-17] for p in s['onnx']['providers_used'])}",
            r["timing"]["onnxruntime"]["p50_ms"],
            f"max|d| {r['vs_torch_fp32_cpu']['max_abs']:.1e}, {r['speedup_vs_torch_cpu_p50']:.2f}x torch CPU")
    for name, g in report.get("goals", {}).items():
        if "value" in g:
            limit = f">= {g['min']}" if "min" in g else (f"<= {g['max']}" if "max" in g else "")
            row("goal", name, None, f"{g['value']:.3g} {limit}: {'met' if g['met'] else 'NOT met'}"
                if not isinstance(g["value"], bool) else f"{g['value']}: {'met' if g['met'] else 'NOT met'}")
        else:
            row("goal", name, None, f"not measured: {g['not_measured']}")
    return "\n".join(lines)


