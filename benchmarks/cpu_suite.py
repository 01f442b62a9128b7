"""The CPU suite: one JSON, one table. Every figure is a ratio to a baseline timed in the same run.

    python -m benchmarks.cpu_suite                                  # everything (tens of minutes on 2 cores)
    python -m benchmarks.cpu_suite --parts encoder --presets tiny small
    python -m benchmarks.cpu_suite --parts decoder

- ``encoder``: the image encoder of each preset (seeded weights; speed does not depend on their values)
  on real photos, batch 1 and 8, interleaved: PyTorch eager with the full last image layer and pruned
  (one row per window), onnxruntime with each graph, and every other CPU path of the pruned graph
  (`CPU_PATHS`): onnxruntime int8 (static u8s8 Q/DQ and dynamic, as `quantize --target cpu` makes them,
  calibrated on the same real photos), OpenVINO fp32 and bf16 on the plain graph and on the Q/DQ graph.
  Ratios: onnxruntime vs eager (both pruned: what a user runs), pruned vs full in eager and in
  onnxruntime, and each path vs eager pruned, with its embedding cosine to eager and whether it holds its
  precision's parity limits (`pixdeploy.parity_limits`: fp32 row for fp32, fp16 row for bf16, int8 row for
  int8); ``fastest`` is the fastest path that holds them.
  `paper-120m` is timed at ``--paper-image-size`` (default 64: 16 windows instead of 196). Windows are
  independent and each costs the same, so the per-window work, and every ratio, is that of 224; at 224 one
  image is about 3.7 TFLOP, half a minute per call on 2 cores.
- ``decoder``: a `small` bundle with a 576-token context (exported in the run, parity-gated) through
  `pixdeploy.runtime.bench`: prefill, decode per token at 32..512 tokens of context, generate end to end,
  each against PyTorch eager, plus the cached step against recomputing 257 tokens, and one decode step at
  batch 1 and context 256 on every CPU path against onnxruntime fp32 (``decode_paths``), with the
  logits' cosine to onnxruntime fp32.

Writes results/cpu_suite.json (or $OUT/cpu_suite.json).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pixdeploy.export.onnx_export import export_graph, graph_specs
from pixdeploy.runtime import bench as rb

from benchmarks.timing import write
from pixdeploy.config import preset
from pixdeploy.eager_baseline import eager_baseline
from pixdeploy.folding import prepare_batch
from pixdeploy.model import PixTokenLM
from pixdeploy.sample_images import sample_images


def export_encoder(model: PixTokenLM, path: Path, prune: bool) -> ort.InferenceSession:
    """The bundle's encoder graph; ``prune=False`` exports the full last layer instead, for comparison."""
    if not prune:
        model.encode_images = functools.partial(PixTokenLM.encode_images, model, prune=False)
    try:
        export_graph(model, graph_specs(model.cfg)[0], path)
    finally:
        model.__dict__.pop("encode_images", None)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# path -> (precision row of the parity limits, backend, graph kind, OpenVINO inference precision)
CPU_PATHS = {
    "ort_int8_static": ("int8", "onnxruntime", "static-u8s8-qdq", None),
    "ort_int8_dynamic": ("int8", "onnxruntime", "dynamic", None),
    "ov_fp32": ("fp32", "openvino", "fp32", "fp32"),
    "ov_bf16": ("fp16", "openvino", "fp32", "bf16"),
    "ov_int8_static": ("int8", "openvino", "static-u8s8-qdq", "fp32"),
    "ov_int8_static_bf16": ("int8", "openvino", "static-u8s8-qdq", "bf16"),
}


def quantized_graphs(graph: Path, feeds: list[dict], folder: Path) -> dict[str, Path]:
    """The int8 schemes `quantize --target cpu` makes, of one graph, calibrated on ``feeds``."""
    import json

    import onnx
    from pixdeploy.export.calibration import measure_ranges
    from pixdeploy.export.quantize import CPU_SCHEMES, WEIGHT_OPS, make_cpu_scheme, quiet_quantizer, weight_matmuls

    with quiet_quantizer():
        ranges = measure_ranges(graph, feeds, list(WEIGHT_OPS))
    ranges_file = folder / "ranges.json"
    ranges_file.write_text(json.dumps(ranges))
    nodes = weight_matmuls(onnx.load(str(graph)))
    out = {"fp32": graph}
    for name in ("static-u8s8-qdq", "dynamic"):
        out[name] = folder / f"{graph.stem}.{name}.onnx"
        make_cpu_scheme(CPU_SCHEMES[name], graph, out[name], nodes, ranges_file)
    return out


def path_runners(graphs: dict[str, Path], bf16: bool) -> dict:
    """A runner per CPU path (bf16 paths only where the CPU has native bf16)."""
    from pixdeploy.runtime.backends import OnnxRuntimeRunner
    from pixdeploy.runtime.openvino_backend import OpenVinoRunner

    runners = {}
    for name, (_, backend, kind, ov_precision) in CPU_PATHS.items():
        if ov_precision == "bf16" and not bf16:
            continue
        runners[name] = (OnnxRuntimeRunner.open(graphs[kind], "cpu") if backend == "onnxruntime"
                         else OpenVinoRunner.open(graphs[kind], ov_precision))
    return runners


def holds_limits(precision_row: str, stats: dict) -> bool:
    from pixdeploy.parity_limits import THRESHOLDS

    limits = THRESHOLDS[precision_row]
    return (stats["cosine_min"] >= limits["embed_cosine_min"]
            and stats["max_abs"] <= limits.get("embed_max_abs", float("inf")))


def has_bf16() -> bool:
    try:
        from pixdeploy.runtime.openvino_backend import cpu_has_bf16

        from pixdeploy.telemetry import import_openvino

        ov = import_openvino()  # OpenVINO's telemetry declined, as everywhere in pixdeploy
    except ImportError:
        return False
    return cpu_has_bf16(ov.Core())


def encoder_rows(name: str, batches: list[int], iters: int, paper_size: int, keep=lambda row: None) -> list[dict]:
    cfg = preset(name)
    note = None
    if name == "paper-120m" and paper_size != cfg.image_size:
        note = f"image_size {paper_size} ({(paper_size // cfg.window) ** 2} windows) instead of {cfg.image_size}"
        cfg = cfg.replace(image_size=paper_size)
    torch.manual_seed(0)
    model = PixTokenLM(cfg).eval()
    real = sample_images()
    work = tempfile.TemporaryDirectory()
    d = Path(work.name)
    sessions = {p: export_encoder(model, d / f"enc_{p}.onnx", p) for p in (True, False)}
    calib = [dict(zip(("images", "sizes"), prepare_batch(real[i:i + 8], cfg.image_size)))
             for i in range(0, len(real), 8)]
    graphs = quantized_graphs(d / "enc_True.onnx", calib, d)
    paths = path_runners(graphs, has_bf16())
    rows = []
    for batch in batches:
        images, sizes = prepare_batch([real[i % len(real)] for i in range(batch)], cfg.image_size)
        ti, ts = torch.from_numpy(images), torch.from_numpy(sizes)
        feed = {"images": images, "sizes": sizes}
        with torch.no_grad():
            ref = model.encode_images(ti, ts, prune=False).numpy()
            pruned = model.encode_images(ti, ts).numpy()
            diffs = {"eager_pruned": pruned,
                     "ort_pruned": sessions[True].run(None, feed)[0], "ort_full": sessions[False].run(None, feed)[0]}
        max_abs = {k: float(np.abs(v - ref).max()) for k, v in diffs.items()}
        from pixdeploy.parity_limits import compare

        path_stats = {k: compare(r.infer(feed)["window_embeddings"], pruned) for k, r in paths.items()}
        path_stats["ort_pruned"] = compare(diffs["ort_pruned"], pruned)

        def eager(prune, ti=ti, ts=ts):
            with torch.no_grad():
                model.encode_images(ti, ts, prune=prune)

        fns = {"eager_full": functools.partial(eager, False), "eager_pruned": functools.partial(eager, True),
               "ort_full": functools.partial(sessions[False].run, None, feed),
               "ort_pruned": functools.partial(sessions[True].run, None, feed),
               **{k: functools.partial(r.infer, feed) for k, r in paths.items()}}
        samples = rb.interleaved(fns, iters, warmup=2)
        res = {k: rb.percentiles(v) for k, v in samples.items()}
        p50 = {k: float(np.median(v)) for k, v in samples.items()}
        vs_eager = {k: {q: res["eager_pruned"][f"{q}_ms"] / res[k][f"{q}_ms"] for q in ("p50", "p90", "p99")}
                    for k in ["ort_pruned", *paths]}
        holds = {k: holds_limits("fp32" if k == "ort_pruned" else CPU_PATHS[k][0], path_stats[k]) for k in vs_eager}
        fastest = max((k for k in vs_eager if holds[k]), key=lambda k: vs_eager[k]["p50"])
        rows.append({"preset": name, "batch": batch, "note": note, "results": res,
                     "images_per_s_p50": {k: batch / v for k, v in p50.items()},
                     "max_abs_vs_eager_full": max_abs,
                     "ratios_p50": {"ort_vs_eager (both pruned)": p50["eager_pruned"] / p50["ort_pruned"],
                                    "ort_pruned_vs_eager_full": p50["eager_full"] / p50["ort_pruned"],
                                    "pruned_vs_full (eager)": p50["eager_full"] / p50["eager_pruned"],
                                    "pruned_vs_full (ort)": p50["ort_full"] / p50["ort_pruned"]},
                     "paths_vs_eager_pruned": vs_eager, "paths_vs_ort_fp32_p50": {
                         k: p50["ort_pruned"] / p50[k] for k in vs_eager},
                     "paths_parity": {k: {"cosine_min": path_stats[k]["cosine_min"],
                                          "max_abs": path_stats[k]["max_abs"], "holds": holds[k],
                                          "limits": "fp32" if k == "ort_pruned" else CPU_PATHS[k][0]}
                                      for k in vs_eager},
                     "fastest": {"path": fastest, "vs_eager_pruned": vs_eager[fastest]}})
        keep(rows[-1])
        print(f"  {name} batch {batch}: done", file=sys.stderr)
    for r in paths.values():
        r.close()
    work.cleanup()
    return rows


def decoder_report(iters: int, variants: list[str]) -> dict:
    """A small bundle and its checkpoint, then `pixdeploy bench`'s own measurement against eager."""
    from pixdeploy.export.bundle import export_bundle

    from pixdeploy.checkpoint import save_checkpoint
    from pixdeploy.tokenizer import Tokenizer

    tok = Tokenizer.train([f"a photo of {n} things" for n in range(200)], 512)
    cfg = preset("small").replace(max_seq_len=576, text_vocab=tok.vocab_size)
    torch.manual_seed(0)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / "ckpt"
        save_checkpoint(ck, PixTokenLM(cfg).state_dict(), cfg, tok, step=0)
        bundle, _ = export_bundle(ck, Path(d) / "bundle", echo=lambda *_: None)
        for variant in variants:
            options = rb.BenchOptions(variant=variant, device="cpu", stages=("prefill", "decode", "generate"),
                                      batches=(1, 8), contexts=(32, 128, 256, 512), new_tokens=32, iters=iters)
            out[variant] = rb.run_bench(bundle.path, options, baseline=eager_baseline(ck, device="cpu"),
                                        show_progress=True)
        out["cached_vs_recompute_at_256"] = cached_vs_recompute(bundle.path, iters)
        out["decode_paths_b1_ctx256"] = decode_paths(bundle.path, iters, Path(d))
    return out


def decode_paths(bundle, iters: int, folder: Path) -> dict:
    """One decode step at batch 1 over a 256-token cache on every CPU path, against onnxruntime fp32 (the int8
    decoders calibrated on the prefill and greedy steps of the real photos, as `quantize` does)."""
    from pixdeploy.export.calibration import decoder_feeds
    from pixdeploy.runtime.backends import OnnxRuntimeRunner

    from pixdeploy.parity_limits import THRESHOLDS, compare

    pipe = rb.load_pipeline(bundle, "fp32", "onnxruntime", "cpu")
    images = sample_images()
    (folder / "dec").mkdir()
    graphs = quantized_graphs(pipe.bundle.graph_path("decoder"), list(decoder_feeds(pipe, images)), folder / "dec")
    runners = {"ort_fp32": OnnxRuntimeRunner.open(graphs["fp32"], "cpu"), **path_runners(graphs, has_bf16())}
    emb = pipe.embed_letterboxed(*prepare_batch(images[:1], pipe.cfg.image_size))
    ids = rb.filler_ids(pipe, 257)
    _, cache = pipe.prefill(emb, ids[:256])
    feed = {"embeds": pipe.text_embeddings[[ids[256]]][:, None].astype(np.float32),
            "input_pos": np.array([256], np.int64), **cache}
    ref = runners["ort_fp32"].infer(feed)["logits"]
    stats = {k: compare(r.infer(feed)["logits"], ref) for k, r in runners.items()}
    samples = rb.interleaved({k: functools.partial(r.infer, feed) for k, r in runners.items()}, iters * 5, warmup=3,
                             block=10)
    res = {k: rb.percentiles(v) for k, v in samples.items()}
    out = {"results": res, "vs_ort_fp32": {}, "parity": {}}
    for k in runners:
        limit = THRESHOLDS["fp32" if k == "ort_fp32" else CPU_PATHS[k][0]].get("logits_cosine_min", 0.99999)
        out["vs_ort_fp32"][k] = {q: res["ort_fp32"][f"{q}_ms"] / res[k][f"{q}_ms"] for q in ("p50", "p90", "p99")}
        out["parity"][k] = {"logits_cosine_min": stats[k]["cosine_min"], "max_abs": stats[k]["max_abs"],
                            "limit": limit, "holds": stats[k]["cosine_min"] >= limit}
        runners[k].close()
    fastest = max((k for k in runners if out["parity"][k]["holds"]), key=lambda k: out["vs_ort_fp32"][k]["p50"])
    out["fastest"] = {"path": fastest, "vs_ort_fp32": out["vs_ort_fp32"][fastest]}
    pipe.close()
    return out


def cached_vs_recompute(bundle, iters: int) -> dict:
    pipe = rb.load_pipeline(bundle, "fp32", "onnxruntime", "cpu")
    emb = pipe.embed_letterboxed(*prepare_batch(sample_images()[:1], pipe.cfg.image_size))
    ids = rb.filler_ids(pipe, 257)
    _, cache = pipe.prefill(emb, ids[:256])
    step = pipe.text_embeddings[[ids[256]]][:, None]
    fns = {"cached_step_256": lambda: pipe._step(step, 256, cache), "recompute_257": lambda: pipe.prefill(emb, ids)}
    samples = rb.interleaved(fns, iters * 5, warmup=3, block=10)
    res = {k: rb.percentiles(v) for k, v in samples.items()}
    return {"results": res, "speedup_p50": res["recompute_257"]["p50_ms"] / res["cached_step_256"]["p50_ms"]}


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {result.get('cpu_class', '?')}; torch "
          f"{result['libraries'].get('torch')}, onnxruntime {result['libraries'].get('onnxruntime')}, "
          f"openvino {result['libraries'].get('openvino', '-')}")
    if result.get("encoder"):
        print(f"\n{'encoder':<18}{'impl':<22}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'img/s':>9}")
        for r in result["encoder"]:
            label = f"{r['preset']} b{r['batch']}"
            for impl, t in r["results"].items():
                print(f"{label:<18}{impl:<22}{t['p50_ms']:>10.1f}{t['p90_ms']:>10.1f}{t['p99_ms']:>10.1f}"
                      f"{r['images_per_s_p50'][impl]:>9.1f}")
            print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios_p50"].items())
                  + (f"  [{r['note']}]" if r["note"] else ""))
            for k, v in r.get("paths_vs_eager_pruned", {}).items():
                par = r["paths_parity"][k]
                print(f"  {k:<22} vs eager pruned p50/p90/p99 {v['p50']:.2f}x / {v['p90']:.2f}x / {v['p99']:.2f}x"
                      f"   cosine {par['cosine_min']:.6f} ({par['limits']} limits "
                      f"{'held' if par['holds'] else 'MISSED'})")
            if r.get("fastest"):
                f = r["fastest"]
                print(f"  fastest CPU path holding parity: {f['path']}, {f['vs_eager_pruned']['p50']:.2f}x "
                      "PyTorch eager (p50)")
    for variant, report in result.get("decoder", {}).items():
        if variant == "decode_paths_b1_ctx256":
            print("\ndecode step, batch 1, context 256, vs onnxruntime fp32 (p50/p90/p99)")
            for k, v in report["vs_ort_fp32"].items():
                par = report["parity"][k]
                print(f"  {k:<22} {v['p50']:.2f}x / {v['p90']:.2f}x / {v['p99']:.2f}x   p50 "
                      f"{report['results'][k]['p50_ms']:.2f} ms   logits cosine {par['logits_cosine_min']:.6f} "
                      f"(>= {par['limit']}: {'held' if par['holds'] else 'MISSED'})")
            print(f"  fastest holding parity: {report['fastest']['path']}, "
                  f"{report['fastest']['vs_ort_fp32']['p50']:.2f}x onnxruntime fp32")
            continue
        if variant == "cached_vs_recompute_at_256":
            c = report["results"]
            print(f"\ncached step at 256: p50 {c['cached_step_256']['p50_ms']:.2f} ms vs recompute 257: "
                  f"{c['recompute_257']['p50_ms']:.2f} ms -> {report['speedup_p50']:.1f}x")
            continue
        print(f"\ndecoder (small, 576-token context), variant {variant}")
        print(rb.table(report))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=["encoder", "decoder"], default=["encoder", "decoder"])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "paper-120m"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--paper-batches", type=int, nargs="+", default=[1],
                    help="batches for paper-120m (each image is ~0.3 TFLOP at 64x64)")
    ap.add_argument("--paper-image-size", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--paper-iters", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["fp32"])
    ap.add_argument("--name", default="cpu_suite", help="results/<name>.json")
    args = ap.parse_args()
    from pixdeploy.cpu import cpu_class

    result = {"machine": rb.machine(), "cpu_class": cpu_class(), "libraries": rb.library_versions(),
              "torch_threads": torch.get_num_threads()}
    if "encoder" in args.parts:
        result["encoder"] = []

        def keep(row):  # written after every row: a long run stopped midway keeps what it measured
            result["encoder"].append(row)
            write(args.name, result)

        for name in args.presets:
            paper = name == "paper-120m"
            encoder_rows(name, args.paper_batches if paper else args.batches,
                         args.paper_iters if paper else args.iters, args.paper_image_size, keep)
    if "decoder" in args.parts:
        result["decoder"] = decoder_report(args.iters, args.variants)
    write(args.name, result)
    print_table(result)


if __name__ == "__main__":
    main()
