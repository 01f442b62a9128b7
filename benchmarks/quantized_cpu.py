"""int8 on onnxruntime CPU: image encoder and decoder step, each against fp32 timed in the same run.

    python -m benchmarks.quantized_cpu --preset small --batch 8

Exports a seeded model's bundle (speed does not depend on weight values), makes the int8 graphs the
way `pixdeploy quantize` does — every candidate scheme of the cpu target (`CPU_SCHEMES`: dynamic, static
u8s8 Q/DQ, each also with reduced-range weights; `quantize --target cpu` keeps the fastest that passes
parity on the machine it runs on) and ``int8-tensorrt`` (symmetric Q/DQ) — calibrated on real photos,
then times them interleaved with fp32 on real images, at the batch asked for (where `quantize` measures
briefly at batch 1). Goal: int8 on cpu at least 1.8x fp32 on the encoder at `small`, batch 8, on an
AVX-512 VNNI CPU, embedding cosine >= 0.99. Writes results/quantized_cpu.json, with the CPU's
instruction-set class.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from pixdeploy.export.bundle import export_bundle
from pixdeploy.export.calibration import calibration_images
from pixdeploy.export.parity import compare, default_parity_images
from pixdeploy.export.quantize import GRAPHS, VARIANTS, calibrate, make_cpu_candidates, make_int8
from pixdeploy.runtime import Pipeline

from benchmarks.timing import cpu_session, interleaved, machine, write
from pixdeploy.checkpoint import save_checkpoint
from pixdeploy.config import preset
from pixdeploy.cpu import cpu_class
from pixdeploy.model import PixTokenLM
from pixdeploy.tokenizer import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        tok = Tokenizer.train([str(n) for n in range(100)], 300)
        cfg = preset(args.preset).replace(text_vocab=tok.vocab_size)
        torch.manual_seed(0)
        save_checkpoint(d / "ckpt", PixTokenLM(cfg).state_dict(), cfg, tok, step=0)
        bundle, _ = export_bundle(d / "ckpt", d / "bundle", echo=lambda *_: None)
        graphs = {"fp32": {g: bundle.graph_path(g) for g in GRAPHS}}
        cache = calibrate(bundle, calibration_images(None, None), None, lambda *_: None)
        (d / "cpu").mkdir()
        graphs.update({f"cpu {n}": g for n, g in make_cpu_candidates(bundle, d / "cpu", cache).items()})
        trt = VARIANTS[("int8", "tensorrt")]
        (d / trt.name).mkdir()
        make_int8(bundle, trt, d / trt.name, cache)
        graphs[trt.name] = {g: d / trt.name / f"{g}.onnx" for g in GRAPHS}

        # Encoder: a batch of real photos and handwriting, letterboxed.
        pipe = Pipeline.open(bundle, device="cpu")
        real = default_parity_images()
        rgb, sizes = pipe.preprocess([real[i % len(real)] for i in range(args.batch)])
        enc = {name: cpu_session(g["image_encoder"]) for name, g in graphs.items()}
        feed = {"images": rgb, "sizes": sizes}
        ref = enc["fp32"].run(None, feed)[0]
        cosine = {name: compare(s.run(None, feed)[0], ref)["cosine_min"] for name, s in enc.items()}
        enc_res = interleaved({name: (lambda s=s: s.run(None, feed)) for name, s in enc.items()}, args.iters)

        # Decoder: one decode step (T = 1) after a prefill of the real images' prompt.
        _, cache_kv = pipe.prefill(ref, pipe.prompt_ids())
        step = {"embeds": pipe.text_embeddings[[1] * args.batch][:, None].astype(np.float32),
                "input_pos": np.array([len(pipe.prompt_ids())], np.int64), **cache_kv}
        dec = {name: cpu_session(g["decoder"]) for name, g in graphs.items()}
        dec_res = interleaved({name: (lambda s=s: s.run(None, step)) for name, s in dec.items()}, args.iters * 5)

    rows = {}
    for name in graphs:
        rows[name] = {"encoder": enc_res[name], "decoder_step": dec_res[name], "encoder_cosine_min": cosine[name],
                      "encoder_speedup_p50": enc_res["fp32"]["p50_ms"] / enc_res[name]["p50_ms"],
                      "decoder_speedup_p50": dec_res["fp32"]["p50_ms"] / dec_res[name]["p50_ms"]}
    isa = cpu_class()
    write("quantized_cpu", {"preset": args.preset, "batch": args.batch, "machine": machine(), "cpu_class": isa,
                            "variants": rows})
    print(table(rows, f"{args.preset}, batch {args.batch}, CPU class {isa}: ratios are fp32 p50 / variant p50, "
                      "timed interleaved in this run"))


def table(rows: dict, title: str) -> str:
    """Fixed-width columns, each separated by two spaces whatever the figures' widths."""
    head = ["variant", "enc p50 ms", "p90 ms", "p99 ms", "ratio", "cosine", "dec p50 ms", "p90 ms", "p99 ms", "ratio"]
    body = []
    for name, r in rows.items():
        e, s = r["encoder"], r["decoder_step"]
        body.append([name, f"{e['p50_ms']:.1f}", f"{e['p90_ms']:.1f}", f"{e['p99_ms']:.1f}",
                     f"{r['encoder_speedup_p50']:.2f}x", f"{r['encoder_cosine_min']:.4f}", f"{s['p50_ms']:.2f}",
                     f"{s['p90_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{r['decoder_speedup_p50']:.2f}x"])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = [lambda c, w: c.ljust(w)] + [lambda c, w: c.rjust(w)] * (len(head) - 1)
    lines = ["  ".join(f(c, w) for f, c, w in zip(fmt, row, widths)) for row in [head, *body]]
    return "\n".join([title, *lines])


if __name__ == "__main__":
    main()
