"""CPU generation end to end (one image in, 16 tokens out, batch 1), every decode path side by side against today's
plain onnxruntime fp32 pipeline in one run, and where the fastest path spends its time.

    python -m benchmarks.cpu_generate --preset small

Paths (one seeded model exported to a bundle; the int8-cpu paths are what `quantize --target cpu` makes from it,
`pixdeploy.export.cpu_schemes`):
- ``plain-fp32-spinning``: the baseline, the fp32 pipeline as it ran before its sessions stopped spinning when idle
  (onnxruntime's default session options: `pixdeploy.runtime.onnxruntime_backend.NO_SPINNING`).
- ``plain-fp32``: `Pipeline.load(bundle)`: fp32 encoder, the plain decoder.
- ``int8-dynamic``: both graphs with onnxruntime's dynamic int8 matmuls.
- ``fused-fp32``: fp32 encoder, the fused decoder with fp32 weights.
- ``int8-fused-int8``, ``int8-fused-int4``: encoder dynamic int8, the fused decoder with MatMulNBits weights.

Each path is a `Pipeline` over the variant's runners; calls are interleaved so noise hits them alike. The profile
splits one generate call of the fastest path into letterboxing, the image encoder, the prefill, the 16 decoder
steps and the rest (sampling, embedding lookups, Python). Results: ``benchmarks/results/cpu_generate.json``
(``$OUT`` if set).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pixdeploy.export.bundle import export_bundle
from pixdeploy.export.cpu_schemes import CPU_SCHEMES
from pixdeploy.export.fused_decoder import unsupported
from pixdeploy.runtime import Pipeline
from pixdeploy.runtime.backends import FusedDecoderRunner, OnnxRuntimeBoundRunner, OnnxRuntimeRunner

from benchmarks.timing import interleaved, machine, write
from pixdeploy.checkpoint import save_checkpoint
from pixdeploy.config import preset
from pixdeploy.cpu import cpu_class
from pixdeploy.folding import prepare_batch
from pixdeploy.model import PixTokenLM
from pixdeploy.sample_images import sample_images
from pixdeploy.tokenizer import Tokenizer

BASELINE = "plain-fp32-spinning"
PLAIN = "plain-fp32"
PATHS = {"int8-dynamic": "dynamic", "fused-fp32": None, "int8-fused-int8": "fused-int8",
         "int8-fused-int4": "fused-int4"}
NEW_TOKENS = 16
BLOCK = 3  # calls in a row per path: an application generates with one pipeline, not several in turn


def make_bundle(preset_name: str, folder: Path):
    tok = Tokenizer.train([f"a photo of {n} things" for n in range(200)], 512)
    cfg = preset(preset_name).replace(max_seq_len=256, text_vocab=tok.vocab_size)
    if unsupported(cfg):
        raise SystemExit(f"preset {preset_name}: {unsupported(cfg)}")
    torch.manual_seed(0)
    model = PixTokenLM(cfg).eval()
    save_checkpoint(folder / "ckpt", model.state_dict(), cfg, tok, step=0)
    bundle, _ = export_bundle(folder / "ckpt", folder / "bundle", echo=lambda *_: None)
    return bundle, model


def make_pipelines(bundle, model, folder: Path, paths: dict = PATHS) -> dict[str, Pipeline]:
    """The baseline (the bundle's fp32 pipeline) and one `Pipeline` per path: ``paths`` maps a name to the
    `CPU_SCHEMES` scheme whose graphs it runs, or None for the fused decoder with fp32 weights and the fp32
    encoder."""
    from pixdeploy.export import fused_decoder

    pipes = {BASELINE: spinning_pipeline(bundle), PLAIN: Pipeline.load(bundle.path, device="cpu")}
    for name, scheme in paths.items():
        where = folder / name
        where.mkdir()
        if scheme is None:  # the fused decoder with fp32 weights, the fp32 encoder
            import onnx

            onnx.save(fused_decoder.build(model), str(where / "decoder.onnx"))
            encoder = bundle.graph_path("image_encoder")
        else:
            CPU_SCHEMES[scheme].make(bundle, where, None, model)
            encoder = where / "image_encoder.onnx"
        fused = scheme is None or CPU_SCHEMES[scheme].fused
        decoder = (FusedDecoderRunner.open_in(bundle, where / "decoder.onnx") if fused
                   else OnnxRuntimeBoundRunner.open(where / "decoder.onnx", "cpu",
                                                    keep=frozenset(p.present for p in bundle.cache_pairs())))
        pipes[name] = Pipeline.from_runners(bundle, OnnxRuntimeRunner.open(encoder, "cpu"), decoder)
    return pipes


def spinning_pipeline(bundle) -> Pipeline:
    """The bundle's fp32 pipeline on sessions with onnxruntime's default options, whose idle threads spin."""
    import onnxruntime as ort

    def session(graph):
        return ort.InferenceSession(str(bundle.graph_path(graph)), providers=["CPUExecutionProvider"])

    keep = frozenset(p.present for p in bundle.cache_pairs())
    return Pipeline.from_runners(bundle, OnnxRuntimeRunner(session("image_encoder")),
                                 OnnxRuntimeBoundRunner(session("decoder"), keep))


def profile(pipe: Pipeline, image, runs: int) -> dict:
    """One generate call split into its stages (median over ``runs`` calls, ms)."""
    stages = {k: [] for k in ("letterbox", "encoder", "prefill", "decode_steps", "rest", "total")}
    for _ in range(runs):
        t0 = time.perf_counter()
        rgb, sizes = prepare_batch([image], pipe.cfg.image_size)
        t1 = time.perf_counter()
        emb = pipe.embed_letterboxed(rgb, sizes)
        t2 = time.perf_counter()
        ids = pipe.prompt_ids()
        logits, cache = pipe.prefill(emb, ids)
        t3 = time.perf_counter()
        step_s = 0.0
        for i in range(NEW_TOKENS - 1):
            nxt = logits[:, : pipe.cfg.text_vocab].argmax(-1)
            a = time.perf_counter()
            logits, cache = pipe._step(pipe.text_embeddings[nxt][:, None], len(ids) + i, cache)
            step_s += time.perf_counter() - a
        t4 = time.perf_counter()
        for k, v in (("letterbox", t1 - t0), ("encoder", t2 - t1), ("prefill", t3 - t2), ("decode_steps", step_s),
                     ("rest", t4 - t3 - step_s), ("total", t4 - t0)):
            stages[k].append(v * 1e3)
    return {k: round(float(np.median(v)), 3) for k, v in stages.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    image = sample_images()[0]
    result = {"preset": args.preset, "machine": {**machine(), "isa": cpu_class()}, "new_tokens": NEW_TOKENS,
              "batch": 1}
    with tempfile.TemporaryDirectory() as d:
        bundle, model = make_bundle(args.preset, Path(d))
        pipes = make_pipelines(bundle, model, Path(d))
        answers = {n: p.generate(image, max_new_tokens=NEW_TOKENS, stop=None) for n, p in pipes.items()}
        rows = interleaved({n: (lambda p=p: p.generate(image, max_new_tokens=NEW_TOKENS, stop=None))
                            for n, p in pipes.items()}, args.iters, block=BLOCK)
        base = rows[BASELINE]["p50_ms"]
        result["paths"] = {n: {**row, "ratio_vs_plain_fp32_p50": round(base / row["p50_ms"], 3),
                               "answer_equals_plain_fp32": answers[n] == answers[BASELINE]} for n, row in rows.items()}
        fastest = max(rows, key=lambda n: base / rows[n]["p50_ms"])
        result["profile"] = {n: profile(pipes[n], image, args.iters) for n in (BASELINE, PLAIN, fastest)}
        for p in pipes.values():
            p.close()
    write("cpu_generate", result)
    print(f"{args.preset}, batch 1, {NEW_TOKENS} tokens, {result['machine']['isa']}, "
          f"onnxruntime {result['machine']['onnxruntime']}")
    print(f"{'path':<18}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'vs plain fp32':>15}  same answer")
    for n, r in result["paths"].items():
        print(f"{n:<18}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['ratio_vs_plain_fp32_p50']:>14.2f}x"
              f"  {r['answer_equals_plain_fp32']}")
    for n, stages in result["profile"].items():
        print(f"profile {n}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in stages.items()))


if __name__ == "__main__":
    main()
