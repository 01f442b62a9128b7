"""int8 on onnxruntime CPU: image encoder and decoder step, each against fp32 timed in the same run.

    python -m benchmarks.quantized_cpu --preset small --batch 8

Exports a seeded model's bundle (speed does not depend on weight values), makes the int8 graphs the
way `pixdeploy quantize` does — ``int8-cpu`` (dynamic, what the cpu target ships), ``int8-tensorrt``
(symmetric Q/DQ) and, as the alternative cpu flavour, static Q/DQ with unsigned activations and signed
per-channel weights — calibrated on real photos, then times them interleaved with fp32 on real images.
Goal: int8-cpu encoder at least 1.8x fp32 at `small`, batch 8, embedding cosine >= 0.99. Writes
results/quantized_cpu.json.
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
from pixdeploy.export.quantize import GRAPHS, VARIANTS, calibrate, make_int8, quiet_quantizer, weight_matmuls
from pixdeploy.runtime import Bundle, Pipeline

from benchmarks.timing import cpu_session, interleaved, machine, write
from pixdeploy.checkpoint import save_checkpoint
from pixdeploy.config import preset
from pixdeploy.model import PixTokenLM
from pixdeploy.tokenizer import Tokenizer


def static_u8s8(bundle: Bundle, cache, out: Path) -> None:
    """The other cpu candidate: static Q/DQ, unsigned activations, signed per-channel weights."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    for g in GRAPHS:
        src = bundle.graph_path(g)
        with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
            quantize_static(src, out / f"{g}.onnx", None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"],
                            nodes_to_quantize=weight_matmuls(onnx.load(str(src))), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibration_cache_path=cache.ort_cache_file(g, Path(tmp)),
                            extra_options={"WeightSymmetric": True,
                                           "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})


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
        for variant in (VARIANTS[("int8", "cpu")], VARIANTS[("int8", "tensorrt")]):
            name = variant.name
            (d / name).mkdir()
            make_int8(bundle, variant, d / name, cache)
            graphs[name] = {g: d / name / f"{g}.onnx" for g in GRAPHS}
        (d / "int8-u8s8-static").mkdir()
        static_u8s8(bundle, cache, d / "int8-u8s8-static")
        graphs["int8-u8s8-static"] = {g: d / "int8-u8s8-static" / f"{g}.onnx" for g in GRAPHS}

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
    write("quantized_cpu", {"preset": args.preset, "batch": args.batch, "machine": machine(), "variants": rows})
    print(f"{args.preset}, batch {args.batch}: ratios are fp32 p50 / variant p50, timed interleaved in this run")
    print(f"{'variant':18}{'enc p50':>9}{'p90':>8}{'p99':>8}{'ratio':>7}{'cosine':>9}"
          f"{'dec p50':>10}{'p90':>8}{'p99':>8}{'ratio':>7}")
    for name, r in rows.items():
        e, s = r["encoder"], r["decoder_step"]
        print(f"{name:18}{e['p50_ms']:>7.1f}ms{e['p90_ms']:>6.1f}ms{e['p99_ms']:>6.1f}ms{r['encoder_speedup_p50']:>6.2f}x"
              f"{r['encoder_cosine_min']:>9.4f}{s['p50_ms']:>8.2f}ms{s['p90_ms']:>6.2f}ms{s['p99_ms']:>6.2f}ms"
              f"{r['decoder_speedup_p50']:>6.2f}x")


if __name__ == "__main__":
    main()
