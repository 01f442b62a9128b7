"""int8-cpu: the int8 scheme that is fastest on onnxruntime CPU *on the machine that quantizes*.

Which scheme wins depends on the instruction set (plain AVX2 needs three instructions per int8 multiply-add,
AVX-512 VNNI and AVX-VNNI one), so the candidate schemes of the same matrix multiplies (`CPU_SCHEMES`: dynamic,
static u8s8 Q/DQ with per-channel weights, each also with reduced-range weights, and where the model allows it
onnxruntime's fused decoder with int8 or int4 block weights) are all made, timed interleaved against fp32 for a
few seconds (encoder and one decoder step at batch 1), and the fastest that passes the int8 parity gate is kept.
The manifest records the scheme, every measured ratio and the CPU's instruction-set class
(`pixdeploy.cpu.cpu_class`); loading the variant on a CPU of another class warns.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from pixdeploy.export import fused_decoder
from pixdeploy.export.calibration import CalibrationCache
from pixdeploy.export.int8 import WEIGHT_OPS, calibration_record, pin_ir_version, quiet_quantizer, weight_matmuls
from pixdeploy.export.profiles import get_profile
from pixdeploy.runtime.bundle import DECODER_FORMS, GRAPHS, Bundle, CpuSchemeRecord, VariantRecord

from pixdeploy.files import marked_temp

FUSED_BLOCK = 32
FUSED_FORM = DECODER_FORMS[0]  # what a variant with a fused decoder records (`Bundle.decoder_form`)
FUSED_GRAPH = "decoder"  # the graph a fused scheme writes from the PyTorch model
BASELINE = "fp32"  # what every scheme is timed against


@dataclass(frozen=True)
class CpuScheme:
    """One candidate int8 scheme for onnxruntime CPU: how the weight matmuls of both graphs are quantized."""

    name: str
    method: str  # recorded in the manifest
    static: bool  # needs calibrated activation ranges
    options: dict  # onnxruntime quantizer arguments
    # The decoder as onnxruntime's fused CPU graph (`pixdeploy.export.fused_decoder`) with MatMulNBits weights of
    # this many bits, made from the PyTorch model; the encoder as the "dynamic" scheme's. None: both graphs are
    # the bundle's fp32 graphs quantized with ``options``.
    fused_bits: int | None = None

    @property
    def fused(self) -> bool:
        return self.fused_bits is not None

    def describe(self, record: VariantRecord) -> VariantRecord:
        """``record`` saying its graphs are this scheme's: the method, and the decoder's form (`Bundle.decoder_form`;
        None: the plain contract)."""
        return replace(record, method=self.method, decoder_form=FUSED_FORM if self.fused else None)

    def make(self, bundle: Bundle, folder: Path, cache: CalibrationCache | None, model=None) -> None:
        """Both graphs of this scheme into ``folder`` (``cache``: the ranges a static scheme needs; ``model``: the
        PyTorch model a fused decoder is written from)."""
        for g in GRAPHS:
            if g == FUSED_GRAPH and self.fused:
                proto = fused_decoder.quantize_weights(fused_decoder.build(model), self.fused_bits, FUSED_BLOCK)
                onnx.save(proto, str(folder / f"{g}.onnx"))
                continue
            src = bundle.graph_path(g)
            nodes = weight_matmuls(onnx.load(str(src), load_external_data=False))
            ranges = cache.ort_cache_file(g, folder) if self.static else None
            make_cpu_scheme(CPU_SCHEMES["dynamic"] if self.fused else self, src, folder / f"{g}.onnx", nodes,
                            ranges)
            if ranges is not None:
                ranges.unlink()


CPU_SCHEMES = {s.name: s for s in (
    CpuScheme("dynamic", "onnxruntime dynamic int8 (ranges per call), signed per-channel weights", False,
              {"reduce_range": False}),
    CpuScheme("dynamic-reduced-range", "onnxruntime dynamic int8, 7-bit signed per-channel weights", False,
              {"reduce_range": True}),
    CpuScheme("static-u8s8-qdq", "onnxruntime static Q/DQ, unsigned activations, signed per-channel weights", True,
              {"reduce_range": False}),
    CpuScheme("static-u8s8-qdq-reduced-range", "onnxruntime static Q/DQ, unsigned activations, 7-bit signed "
              "per-channel weights", True, {"reduce_range": True}),
    # Weight-only int8/int4 in blocks of 32, symmetric, accuracy_level 4 (int8 products of the activations):
    # measured against the schemes above like any other; int4 must hold the same int8 parity gate to be kept.
    CpuScheme("fused-int8", "fused onnxruntime decoder (GroupQueryAttention, in-place KV buffer), MatMulNBits int8 "
              "weights in blocks of 32; encoder dynamic int8", False, {"reduce_range": False}, fused_bits=8),
    CpuScheme("fused-int4", "fused onnxruntime decoder (GroupQueryAttention, in-place KV buffer), MatMulNBits int4 "
              "weights in blocks of 32; encoder dynamic int8", False, {"reduce_range": False}, fused_bits=4),
)}
UNMEASURED = CPU_SCHEMES["dynamic"]  # for callers that want int8-cpu graphs without measuring: needs no ranges


def make_cpu_scheme(scheme: CpuScheme, src: Path, dst: Path, nodes: list[str], ranges_file: Path | None) -> None:
    """One graph quantized with ``scheme`` (``ranges_file``: onnxruntime calibration cache, static schemes)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with quiet_quantizer():
        if scheme.static:
            quantize_static(src, dst, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(WEIGHT_OPS),
                            nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibration_cache_path=ranges_file,
                            reduce_range=scheme.options["reduce_range"],
                            extra_options={"WeightSymmetric": True,
                                           "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS)})
        else:
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
                             weight_type=QuantType.QInt8, reduce_range=scheme.options["reduce_range"])


def schemes_for(bundle: Bundle) -> dict[str, CpuScheme]:
    """The candidates for this bundle: the fused decoder needs opset 23 and IR 11, which a tensorrt-10.3 bundle's
    variants (IR 10) cannot carry, and a head size onnxruntime's fused attention takes."""
    fused = get_profile(bundle.export_target).ir_version >= fused_decoder.IR_VERSION \
        and fused_decoder.unsupported(bundle.config) is None
    return {n: s for n, s in CPU_SCHEMES.items() if not s.fused or fused}


def make_cpu_candidates(bundle: Bundle, root: Path, cache: CalibrationCache | None, model=None
                        ) -> dict[str, dict[str, Path]]:
    """Every scheme of `schemes_for` made into ``root/<scheme>/`` -> scheme -> graph -> path (``model``: the
    PyTorch model the fused decoders are written from; without it they are left out)."""
    out = {}
    for scheme in schemes_for(bundle).values():
        if scheme.fused and model is None:
            continue
        folder = root / scheme.name
        folder.mkdir()
        scheme.make(bundle, folder, cache, model)
        out[scheme.name] = {g: folder / f"{g}.onnx" for g in GRAPHS}
    return out


# Interleaved rounds: each calls every scheme's encoder once and its decoder step DECODE_BLOCK times; at least
# MEASURE_ROUNDS, more while under MEASURE_SECONDS (tiny models: a round is milliseconds, noisy), at most MAX_ROUNDS.
MEASURE_ROUNDS, MEASURE_SECONDS, MAX_ROUNDS = 5, 3.0, 60
DECODE_BLOCK = 5
HOW_MEASURED = ("onnxruntime CPU, interleaved with fp32: encoder at batch 1, one decoder step at batch 1; "
                "ratio = fp32 time / scheme time")


def _timing_feeds(bundle: Bundle, images: list) -> tuple[dict, dict, dict]:
    """(encoder feed: one real image, prefill feed: its prompt, one decoder step's feed without its cache)."""
    import numpy as np
    from pixdeploy.runtime.pipeline import Pipeline

    with Pipeline.open(bundle, device="cpu") as pipe:
        rgb, sizes = pipe.preprocess(images[:1])
        ids = pipe.prompt_ids()
        prompt = {"embeds": pipe.prompt_embeds(pipe.embed_letterboxed(rgb, sizes), ids),
                  "input_pos": np.arange(len(ids), dtype=np.int64), **pipe.empty_cache(1)}
        step = {"embeds": pipe.text_embeddings[ids[-1:]][None].astype(np.float32),
                "input_pos": np.array([len(ids)], np.int64)}
    return {"images": rgb, "sizes": sizes}, prompt, step


def _open_runners(bundle: Bundle, graphs: dict[str, dict[str, Path]]) -> dict:
    """name -> graph -> runner on onnxruntime CPU; a fused scheme's decoder through its own runner."""
    from pixdeploy.runtime.backends import FusedDecoderRunner, OnnxRuntimeRunner

    def decoder(name, path):
        scheme = CPU_SCHEMES.get(name)
        if scheme is not None and scheme.fused:
            return FusedDecoderRunner.open_in(bundle, path)
        return OnnxRuntimeRunner.open(path, "cpu")

    return {n: {"image_encoder": OnnxRuntimeRunner.open(gs["image_encoder"], "cpu"),
                "decoder": decoder(n, gs["decoder"])} for n, gs in graphs.items()}


def measure_cpu_schemes(bundle: Bundle, candidates: dict[str, dict[str, Path]], images: list,
                        rounds: int = MEASURE_ROUNDS, clock=time.perf_counter) -> dict:
    """Time each candidate against fp32 on onnxruntime CPU, interleaved (noise hits all alike): the encoder on
    one real image, one decoder step at batch 1 after a real prefill. -> scheme -> {"encoder": {p50, p90,
    p99}, "decoder_step": {...}} as ratios fp32 / scheme (> 1: faster), and "score", their geometric mean at p50."""
    enc_feed, prompt, step = _timing_feeds(bundle, images)
    runners = _open_runners(bundle, {BASELINE: {g: bundle.graph_path(g) for g in GRAPHS}, **candidates})
    samples = {n: {"encoder": [], "decoder_step": []} for n in runners}
    try:
        dec_feeds = {}
        for n, r in runners.items():  # each decoder steps on the cache its own prefill left (its own form)
            out = r["decoder"].infer(prompt)
            dec_feeds[n] = {**step, **{p.past: out[p.present] for p in bundle.cache_pairs()}}
        for _ in range(2):  # warm-up: first calls allocate
            for n, r in runners.items():
                r["image_encoder"].infer(enc_feed)
                r["decoder"].infer(dec_feeds[n])
        start, done = time.perf_counter(), 0
        while done < rounds or (time.perf_counter() - start < MEASURE_SECONDS and done < MAX_ROUNDS):
            done += 1
            for n, r in runners.items():
                t = clock()
                r["image_encoder"].infer(enc_feed)
                samples[n]["encoder"].append(clock() - t)
                for _ in range(DECODE_BLOCK):
                    t = clock()
                    r["decoder"].infer(dec_feeds[n])
                    samples[n]["decoder_step"].append(clock() - t)
    finally:
        for r in runners.values():
            for runner in r.values():
                runner.close()
    return scheme_ratios(samples)


def scheme_ratios(samples: dict) -> dict:
    """Raw seconds (name -> stage -> samples, `BASELINE` among the names) -> ratios fp32 / scheme per percentile."""
    import numpy as np

    def pct(xs, q):
        return float(np.percentile(np.asarray(xs, np.float64), q))

    out = {}
    for n, stages in samples.items():
        if n == BASELINE:
            continue
        row = {st: {f"p{q}": round(pct(samples[BASELINE][st], q) / pct(xs, q), 4) for q in (50, 90, 99)}
               for st, xs in stages.items()}
        row["score"] = round(float(np.sqrt(row["encoder"]["p50"] * row["decoder_step"]["p50"])), 4)
        out[n] = row
    return out


def choose_cpu_scheme(job, staged, record: VariantRecord, cache: CalibrationCache) -> tuple:
    """Make every candidate scheme, time them against fp32 here, then put the fastest through the parity gate,
    the next fastest when it fails, and so on. ``job``: the quantize run (`pixdeploy.export.quantize.Job`: its
    bundle, model, parity images, gate, echo and measurement). -> (``record`` with the kept scheme's method,
    decoder form and measurement (`CpuSchemeRecord`), its parity result), or (``record``, the last failing
    result) when none passes."""
    from pixdeploy.cpu import cpu_class

    isa = cpu_class()
    with marked_temp("pixdeploy-cpu-schemes-") as tmp:
        schemes = schemes_for(job.bundle)
        job.echo(f"making {len(schemes)} int8 schemes: {', '.join(schemes)}")
        candidates = make_cpu_candidates(job.bundle, Path(tmp), cache, job.model)
        job.echo(f"timing them against fp32 on this CPU ({isa}), interleaved")
        ratios = (job.options.measure or measure_cpu_schemes)(job.bundle, candidates, job.parity_images)
        order = sorted(ratios, key=lambda n: -ratios[n]["score"])
        for n in order:
            r = ratios[n]
            job.echo(f"  {n}: encoder {r['encoder']['p50']:.2f}x, decoder step {r['decoder_step']['p50']:.2f}x fp32 "
                     "(p50)")
        kept, rejected, result = _first_passing(job, staged, record, [(n, candidates[n]) for n in order])
    if kept is None:
        return record, result
    measured = CpuSchemeRecord(kept.name, isa, ratios, rejected, HOW_MEASURED)
    return replace(kept.describe(record), cpu_scheme=measured,
                   calibration=calibration_record(cache) if kept.static else None), result


def _first_passing(job, staged, record: VariantRecord, ordered: list) -> tuple:
    """Each (scheme name, its graphs) of ``ordered`` staged and gated in turn, until one passes. -> (the scheme
    kept or None, scheme -> why parity refused it, the last parity result)."""
    rejected, result = {}, None
    ir_version = get_profile(job.bundle.export_target).ir_version
    for name, graphs in ordered:
        scheme = CPU_SCHEMES[name]
        for g in GRAPHS:
            shutil.copyfile(graphs[g], staged.dir / f"{g}.onnx")
            pin_ir_version(staged.dir / f"{g}.onnx", ir_version)
        job.echo(f"trying {name}, the fastest left")
        result = job.gate(scheme.describe(record), staged)
        if result:
            return scheme, rejected, result
        rejected[name] = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
        job.echo(f"  {name} failed parity ({rejected[name]})")
    return None, rejected, result
