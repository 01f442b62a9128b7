"""The CPU suite: one JSON, one table. Every figure is a ratio to a baseline timed in the same run.

    python -m benchmarks.cpu_suite                                  # everything (tens of minutes on 2 cores)
    python -m benchmarks.cpu_suite --parts encoder --presets tiny small
    python -m benchmarks.cpu_suite --parts decoder

- ``encoder``: the image encoder of each preset (seeded weights; speed does not depend on their values)
  on real photos, batch 1 and 8, four ways interleaved: PyTorch eager with the full last image layer and
  pruned (one row per window), onnxruntime with each graph. Ratios: onnxruntime vs eager (both pruned:
  what a user runs), pruned vs full in eager and in onnxruntime.
  `paper-120m` is timed at ``--paper-image-size`` (default 64: 16 windows instead of 196). Windows are
  independent and each costs the same, so the per-window work, and every ratio, is that of 224; at 224 one
  image is about 3.7 TFLOP, half a minute per call on 2 cores.
- ``decoder``: a `small` bundle with a 576-token context (exported in the run, parity-gated) through
  `pixdeploy.runtime.bench`: prefill, decode per token at 32..512 tokens of context, generate end to end,
  each against PyTorch eager, plus the cached step against recomputing 257 tokens.

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


def encoder_rows(name: str, batches: list[int], iters: int, paper_size: int, keep=lambda row: None) -> list[dict]:
    cfg = preset(name)
    note = None
    if name == "paper-120m" and paper_size != cfg.image_size:
        note = f"image_size {paper_size} ({(paper_size // cfg.window) ** 2} windows) instead of {cfg.image_size}"
        cfg = cfg.replace(image_size=paper_size)
    torch.manual_seed(0)
    model = PixTokenLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        sessions = {p: export_encoder(model, Path(d) / f"enc_{p}.onnx", p) for p in (True, False)}
    real = sample_images()
    rows = []
    for batch in batches:
        images, sizes = prepare_batch([real[i % len(real)] for i in range(batch)], cfg.image_size)
        ti, ts = torch.from_numpy(images), torch.from_numpy(sizes)
        feed = {"images": images, "sizes": sizes}
        with torch.no_grad():
            ref = model.encode_images(ti, ts, prune=False).numpy()
            diffs = {"eager_pruned": model.encode_images(ti, ts).numpy(),
                     "ort_pruned": sessions[True].run(None, feed)[0], "ort_full": sessions[False].run(None, feed)[0]}
        max_abs = {k: float(np.abs(v - ref).max()) for k, v in diffs.items()}

        def eager(prune, ti=ti, ts=ts):
            with torch.no_grad():
                model.encode_images(ti, ts, prune=prune)

        fns = {"eager_full": functools.partial(eager, False), "eager_pruned": functools.partial(eager, True),
               "ort_full": functools.partial(sessions[False].run, None, feed),
               "ort_pruned": functools.partial(sessions[True].run, None, feed)}
        samples = rb.interleaved(fns, iters, warmup=2)
        res = {k: rb.percentiles(v) for k, v in samples.items()}
        p50 = {k: float(np.median(v)) for k, v in samples.items()}
        rows.append({"preset": name, "batch": batch, "note": note, "results": res,
                     "images_per_s_p50": {k: batch / v for k, v in p50.items()},
                     "max_abs_vs_eager_full": max_abs,
                     "ratios_p50": {"ort_vs_eager (both pruned)": p50["eager_pruned"] / p50["ort_pruned"],
                                    "ort_pruned_vs_eager_full": p50["eager_full"] / p50["ort_pruned"],
                                    "pruned_vs_full (eager)": p50["eager_full"] / p50["eager_pruned"],
                                    "pruned_vs_full (ort)": p50["ort_full"] / p50["ort_pruned"]}})
        keep(rows[-1])
        print(f"  {name} batch {batch}: done", file=sys.stderr)
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
            out[variant] = rb.run_bench(bundle.path, variant=variant, device="cpu",
                                        stages=("prefill", "decode", "generate"), batches=(1, 8),
                                        contexts=(32, 128, 256, 512), new_tokens=32, iters=iters, baseline=ck,
                                        show_progress=True)
        out["cached_vs_recompute_at_256"] = cached_vs_recompute(bundle.path, iters)
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
    print(f"machine: {m['cpu']}, {m['cores']} cores; torch {result['libraries'].get('torch')}, "
          f"onnxruntime {result['libraries'].get('onnxruntime')}")
    if result.get("encoder"):
        print(f"\n{'encoder':<18}{'impl':<14}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'img/s':>9}")
        for r in result["encoder"]:
            label = f"{r['preset']} b{r['batch']}"
            for impl, t in r["results"].items():
                print(f"{label:<18}{impl:<14}{t['p50_ms']:>10.1f}{t['p90_ms']:>10.1f}{t['p99_ms']:>10.1f}"
                      f"{r['images_per_s_p50'][impl]:>9.1f}")
            print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios_p50"].items())
                  + (f"  [{r['note']}]" if r["note"] else ""))
    for variant, report in result.get("decoder", {}).items():
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
    result = {"machine": rb.machine(), "libraries": rb.library_versions(), "torch_threads": torch.get_num_threads()}
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
