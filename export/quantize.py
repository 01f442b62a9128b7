"""fp16 and int8 variants of a bundle: explicit graphs, chosen per target, gated on parity.

Precision is decided in the ONNX (TensorRT 11 has no fp16/int8 builder flags nor implicit int8
calibration), so each variant is a pair of graphs that any TensorRT, or onnxruntime, runs as written:

- ``fp16`` — exported from the half-precision PyTorch model. The reference model already keeps its
  numerically fragile parts in fp32 (RMSNorm statistics, RoPE tables and rotation, the logits), so
  exporting it in half precision carries exactly those fp32 islands into the graph: they are decided
  in one place, the model's code, rather than in an op block list that a graph converter
  (onnxconverter-common, ModelOpt AutoCast) needs kept in step with the exporter's output; the custom
  ops keep their names and bodies. Where the exporter fuses an island into one operator (RMSNorm,
  attention's softmax), the fp32 precision is an attribute, set explicitly (`mark_fp32_islands`).
  Inputs, outputs and the KV cache stay fp32, so every variant has the same signature.
- ``int8-tensorrt`` — explicit symmetric Q/DQ (zero point 0): weights per output channel, activations
  per tensor, on the matrix multiplies of both graphs; attention, norms and the KV cache stay float.
  What TensorRT 10.x and 11.x build int8 engines from.
- ``int8-cpu`` — what is fastest on onnxruntime CPU *on the machine that quantizes*: which int8 scheme wins
  depends on the instruction set (plain AVX2 needs three instructions per int8 multiply-add, AVX-512 VNNI
  and AVX-VNNI one), so the candidate schemes of the same matrix multiplies (`CPU_SCHEMES`: dynamic, static
  u8s8 Q/DQ with per-channel weights, each also with reduced-range weights) are all made, timed interleaved
  against fp32 for a few seconds (encoder and one decoder step at batch 1), and the fastest that passes the
  int8 parity gate is kept. The manifest records the scheme, every measured ratio and the CPU's
  instruction-set class (`pixdeploy.cpu.cpu_class`); loading the variant on a CPU of another class warns.

The quantizer is onnxruntime's (`onnxruntime.quantization`): it is already a dependency, writes the
IR version and opset the rest of the bundle uses, and runs on every machine that runs the bundle;
NVIDIA ModelOpt would force IR version <= 10 and pin onnxruntime-gpu 1.24.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from pixdeploy.export import fused_decoder
from pixdeploy.export.calibration import (
    CalibrationCache,
    CalibrationError,
    calibration_images,
    decoder_feeds,
    encoder_feeds,
    measure_ranges,
)
from pixdeploy.export.onnx_export import graph_specs
from pixdeploy.export.parity import ParityError, check_parity, default_parity_images
from pixdeploy.export.profiles import get_profile
from pixdeploy.runtime.backends import check_graphs_load
from pixdeploy.runtime.bundle import DECODER_FORMS, GRAPHS, Bundle, adding_variant

from pixdeploy.errors import PixdeployError
from pixdeploy.files import check_not_inside, sha256

WEIGHT_OPS = ("MatMul", "Gemm")  # the matrix multiplies: linear layers and the output head


@dataclass(frozen=True)
class Variant:
    """One row of the table of what `quantize` can make."""

    name: str  # the variant's name in the bundle
    precision: str  # the row of the parity threshold table
    target: str  # what it is for: any, tensorrt, cpu
    method: str  # how the graphs are made, recorded in the manifest
    calibrated: bool = False  # takes --calib/--calib-count/--calib-cache (activation ranges)
    # How the graphs are made and gated: a key of `MAKERS` (defined below, with the makers).
    make: str = "half"


VARIANTS = {
    ("fp16", "tensorrt"): Variant("fp16", "fp16", "any", "half-precision export with fp32 islands"),
    ("fp16", "cpu"): Variant("fp16", "fp16", "any", "half-precision export with fp32 islands"),
    ("int8", "tensorrt"): Variant("int8-tensorrt", "int8", "tensorrt",
                                  "onnxruntime QDQ, symmetric int8, per-channel weights, MinMax calibration",
                                  calibrated=True, make="tensorrt-qdq"),
    ("int8", "cpu"): Variant("int8-cpu", "int8", "cpu",
                             "onnxruntime int8, the scheme measured fastest on this CPU that passes parity",
                             calibrated=True, make="cpu-schemes"),
}


@dataclass(frozen=True)
class QuantizeOptions:
    """What `quantize_bundle` takes beyond the bundle, precision and target.

    ``checkpoint``: the PyTorch model to gate against (default: the one the bundle names). ``calib``,
    ``calib_count``, ``calib_cache``: the int8 calibration images and the cache of their ranges. ``parity_images``:
    the gate's images (default: real sample photos). ``extra_checks(pipeline) -> [Check]`` adds checks to the gate
    (the demo's held-out reading). ``steps``: greedy tokens compared per image (an answer's length, not a page's:
    past a model's answer its tokens are guesses that quantization noise may flip). ``force``: replace the
    variant. ``measure``: how int8-cpu times its candidate schemes (default `measure_cpu_schemes`; tests pass
    rigged timings)."""

    checkpoint: object = None
    calib: object = None
    calib_count: int | None = None
    calib_cache: object = None
    parity_images: list | None = None
    extra_checks: Callable | None = None
    steps: int = 8
    force: bool = False
    measure: Callable | None = None
PRECISIONS = ("fp16", "int8")
TARGETS = ("tensorrt", "cpu")


def choose_variant(precision: str, target: str) -> Variant:
    if precision not in PRECISIONS:
        raise PixdeployError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise PixdeployError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    return VARIANTS[(precision, target)]


# ---- fp16 ----


def half_model(model):
    """A half-precision copy whose fp32 islands stay fp32: RoPE tables (buffers) and the output head."""
    import torch

    half = copy.deepcopy(model).half().eval()
    for name in ("image_cos", "image_sin", "text_cos", "text_sin"):
        setattr(half, name, getattr(model, name).float())
    half.head.float()  # logits over thousands of colours: fp32 keeps their ranking
    half.to(torch.device("cpu"))
    return half


def _fp16_wrappers():
    from torch import nn

    class Fp16Encoder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images, sizes):
            return self.model.encode_images(images, sizes).float()

    class Fp16Decoder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, embeds, input_pos, *past):
            cache = [(past[2 * i].half(), past[2 * i + 1].half()) for i in range(len(past) // 2)]
            h, cache = self.model.decode(embeds.half(), cache, input_pos)
            logits = self.model.head(h[:, -1].float())
            return (logits, *[t.float() for kv in cache for t in kv])

    return {"image_encoder": Fp16Encoder, "decoder": Fp16Decoder}


# Fused operators whose fp32 island is an attribute: the exporter folds the reference model's
# `.float()` around the norm into RMSNormalization (fp16 in and out), whose statistics then follow
# `stash_type`; Attention's softmax follows `softmax_precision`. Both are set explicitly, not left to defaults,
# except where the target's TensorRT parser refuses the attribute itself (10.15+ refuses any softmax_precision
# on Attention; its fused kernels keep softmax statistics in fp32 anyway): `trt_support` holds which.
FP32_ATTRIBUTES = {"RMSNormalization": "stash_type", "LayerNormalization": "stash_type",
                   "Attention": "softmax_precision"}


def mark_fp32_islands(proto: onnx.ModelProto, profile) -> None:
    """Norm statistics and softmax in fp32 on every fused node, in the graph and in function bodies, as far as
    ``profile``'s TensorRT parser accepts the attributes that say so."""
    from pixdeploy.export.trt_support import parser_table

    refused = parser_table(profile.tensorrt_min).refused_attributes if profile.tensorrt_min else {}
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    for node in nodes:
        attr = FP32_ATTRIBUTES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if attr and attr not in refused.get(node.op_type, {}):
            kept = [a for a in node.attribute if a.name != attr]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute(attr, onnx.TensorProto.FLOAT)])


def make_fp16(model, out: Path, profile) -> dict:
    """``profile``: the export target of the bundle's fp32 graphs, whose operator set the fp16 graphs keep."""
    from pixdeploy.export.onnx_export import export_graph

    half = half_model(model)
    wrappers = _fp16_wrappers()
    for spec in graph_specs(model.cfg):
        path = out / f"{spec.name}.onnx"
        proto = export_graph(half, spec, path, profile, wrapper=wrappers[spec.name](half).eval())
        mark_fp32_islands(proto, profile)
        onnx.save(proto, str(path))
    return {}


# ---- int8 ----


def weight_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of the matrix multiplies whose second operand is a weight (not attention's activations)."""
    weights = {i.name for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in weights]


@contextlib.contextmanager
def quiet_quantizer():
    """onnxruntime's quantizer logs advice on the root logger ("consider pre-processing"): not for users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def calibrate(bundle: Bundle, images: list, cache_path: Path | None, echo) -> CalibrationCache:
    """Ranges for both fp32 graphs: from ``cache_path`` when it exists (checked to be this model's),
    else measured on ``images`` (and saved to ``cache_path`` when given)."""
    from pixdeploy.runtime.pipeline import Pipeline
    from tqdm import tqdm

    expected = {g: sha256(bundle.graph_path(g)) for g in GRAPHS}
    if cache_path is not None and Path(cache_path).is_file():
        cache = CalibrationCache.load(cache_path, expected)
        echo(f"calibration: ranges from {cache_path} ({cache.images} images of {cache.source}); nothing recomputed")
        return cache
    graphs = {}
    with Pipeline.open(bundle, device="cpu") as pipe:
        feeds = {"image_encoder": encoder_feeds(pipe, images), "decoder": decoder_feeds(pipe, images)}
        for g in GRAPHS:
            with tqdm(desc=f"calibrating {g}", unit="batch", leave=False) as bar, quiet_quantizer():
                graphs[g] = {"sha256": expected[g],
                             "ranges": measure_ranges(bundle.graph_path(g), feeds[g], list(WEIGHT_OPS), bar)}
    source = "sample photos" if images and not isinstance(images[0], (str, Path)) else str(Path(images[0]).parent)
    cache = CalibrationCache(graphs, len(images), source)
    if cache_path is not None:
        cache.save(Path(cache_path), echo=echo)
        echo(f"calibration: ranges of {len(images)} images saved to {cache_path}")
    return cache


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
FUSED_BLOCK = 32
FUSED_FORM = DECODER_FORMS[0]  # what a variant with a fused decoder records (`Bundle.decoder_form`)


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


def cpu_schemes(bundle: Bundle) -> dict[str, CpuScheme]:
    """The candidates for this bundle: the fused decoder needs opset 23 and IR 11, which a tensorrt-10.3 bundle's
    variants (IR 10) cannot carry, and a head size onnxruntime's fused attention takes."""
    fused = get_profile(bundle.export_target).ir_version >= fused_decoder.IR_VERSION \
        and fused_decoder.unsupported(bundle.config) is None
    return {n: s for n, s in CPU_SCHEMES.items() if s.fused_bits is None or fused}


def make_cpu_candidates(bundle: Bundle, root: Path, cache: CalibrationCache | None, model=None
                        ) -> dict[str, dict[str, Path]]:
    """Every scheme of `cpu_schemes` made into ``root/<scheme>/`` -> scheme -> graph -> path (``model``: the
    PyTorch model the fused decoders are written from; without it they are left out)."""
    out = {}
    for scheme in cpu_schemes(bundle).values():
        if scheme.fused_bits is not None and model is None:
            continue
        folder = root / scheme.name
        folder.mkdir()
        for g in GRAPHS:
            if g == "decoder" and scheme.fused_bits is not None:
                proto = fused_decoder.quantize_weights(fused_decoder.build(model), scheme.fused_bits, FUSED_BLOCK)
                onnx.save(proto, str(folder / f"{g}.onnx"))
                continue
            src = bundle.graph_path(g)
            nodes = weight_matmuls(onnx.load(str(src), load_external_data=False))
            ranges = cache.ort_cache_file(g, folder) if scheme.static else None
            make_cpu_scheme(scheme if scheme.fused_bits is None else CPU_SCHEMES["dynamic"], src,
                            folder / f"{g}.onnx", nodes, ranges)
            if ranges is not None:
                ranges.unlink()
        out[scheme.name] = {g: folder / f"{g}.onnx" for g in GRAPHS}
    return out


# Interleaved rounds: each calls every scheme's encoder once and its decoder step DECODE_BLOCK times; at least
# MEASURE_ROUNDS, more while under MEASURE_SECONDS (tiny models: a round is milliseconds, noisy), at most MAX_ROUNDS.
MEASURE_ROUNDS, MEASURE_SECONDS, MAX_ROUNDS = 5, 3.0, 60
DECODE_BLOCK = 5


def measure_cpu_schemes(bundle: Bundle, candidates: dict[str, dict[str, Path]], images: list,
                        rounds: int = MEASURE_ROUNDS, clock=time.perf_counter) -> dict:
    """Time each candidate against fp32 on onnxruntime CPU, interleaved (noise hits all alike): the encoder on
    one real image, one decoder step at batch 1 after a real prefill. -> scheme -> {"encoder": {p50, p90,
    p99}, "decoder_step": {...}} as ratios fp32 / scheme (> 1: faster), and "score", their geometric mean at p50."""
    import numpy as np
    from pixdeploy.runtime.backends import FusedDecoderRunner, OnnxRuntimeRunner
    from pixdeploy.runtime.pipeline import Pipeline

    graphs = {"fp32": {g: bundle.graph_path(g) for g in GRAPHS}, **candidates}
    with Pipeline.open(bundle, device="cpu") as pipe:
        rgb, sizes = pipe.preprocess(images[:1])
        ids = pipe.prompt_ids()
        prompt = {"embeds": pipe.prompt_embeds(pipe.embed_letterboxed(rgb, sizes), ids),
                  "input_pos": np.arange(len(ids), dtype=np.int64), **pipe.empty_cache(1)}
        enc_feed = {"images": rgb, "sizes": sizes}
        step = {"embeds": pipe.text_embeddings[ids[-1:]][None].astype(np.float32),
                "input_pos": np.array([len(ids)], np.int64)}
    pairs = bundle.cache_pairs()

    def decoder(name, path):
        if name in CPU_SCHEMES and CPU_SCHEMES[name].fused_bits is not None:
            return FusedDecoderRunner.open(path, bundle.graphs["decoder"], pairs, bundle.config)
        return OnnxRuntimeRunner.open(path, "cpu")

    runners = {n: {"image_encoder": OnnxRuntimeRunner.open(gs["image_encoder"], "cpu"),
                   "decoder": decoder(n, gs["decoder"])} for n, gs in graphs.items()}
    samples = {n: {"encoder": [], "decoder_step": []} for n in graphs}
    try:
        dec_feeds = {}
        for n, r in runners.items():  # each decoder steps on the cache its own prefill left (its own form)
            out = r["decoder"].infer(prompt)
            dec_feeds[n] = {**step, **{p.past: out[p.present] for p in pairs}}
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
    """Raw seconds (name -> stage -> samples, "fp32" among the names) -> ratios fp32 / scheme per percentile."""
    import numpy as np

    def pct(xs, q):
        return float(np.percentile(np.asarray(xs, np.float64), q))

    out = {}
    for n, stages in samples.items():
        if n == "fp32":
            continue
        row = {st: {f"p{q}": round(pct(samples["fp32"][st], q) / pct(xs, q), 4) for q in (50, 90, 99)}
               for st, xs in stages.items()}
        row["score"] = round(float(np.sqrt(row["encoder"]["p50"] * row["decoder_step"]["p50"])), 4)
        out[n] = row
    return out


def make_int8(bundle: Bundle, variant: Variant, out: Path, cache: CalibrationCache | None) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    for g in GRAPHS:
        src = bundle.graph_path(g)
        nodes = weight_matmuls(onnx.load(str(src), load_external_data=False))
        with tempfile.TemporaryDirectory(prefix="pixdeploy-q-") as tmp, quiet_quantizer():
            if variant.target == "tensorrt":
                quantize_static(
                    src, out / f"{g}.onnx", None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(WEIGHT_OPS),
                    nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibration_cache_path=cache.ort_cache_file(g, Path(tmp)),
                    # Zero points 0; Q/DQ on matmul inputs only (TensorRT fuses DQ -> MatMul, and an output
                    # Q/DQ would force a requantize before attention and the norms, which stay float).
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS)})
            else:  # the cpu target's first scheme, for callers that want one without measuring
                make_cpu_scheme(CPU_SCHEMES["dynamic"], src, out / f"{g}.onnx", nodes, None)
    return {"images": cache.images, "source": cache.source} if variant.target == "tensorrt" else {}


def pin_ir_version(path: Path, ir_version: int) -> None:
    """onnxruntime's quantizer writes its own IR version; a variant keeps its bundle's (onnxruntime 1.31
    reads at most 13; TensorRT 10.3's parser reads 10)."""
    proto = onnx.load(str(path))
    if proto.ir_version != ir_version:
        proto.ir_version = ir_version
        onnx.save(proto, str(path))


# ---- the bundle ----


def check_request(variant: Variant, o: QuantizeOptions) -> None:
    """Options that do not fit the variant, refused before any work."""
    if not variant.calibrated and (o.calib is not None or o.calib_count is not None or o.calib_cache is not None):
        raise PixdeployError("--calib, --calib-count and --calib-cache are for int8; fp16 needs no calibration")
    if o.calib_count is not None and o.calib_count < 1:
        raise CalibrationError(f"--calib-count must be at least 1, got {o.calib_count}")


def source_model(bundle: Bundle, checkpoint):
    """The PyTorch model the bundle was exported from (or ``checkpoint``), refused when it is another model."""
    from pixdeploy.checkpoint import Checkpoint

    checkpoint = checkpoint or bundle.source_checkpoint
    if not checkpoint:
        raise PixdeployError(f"bundle {bundle.path} does not name its checkpoint; pass --checkpoint")
    ck = Checkpoint(checkpoint)
    if ck.config.to_dict() != bundle.config.to_dict():
        raise PixdeployError(f"checkpoint {ck.path} is not the model of bundle {bundle.path} (configs differ)")
    return ck


def make_graphs(bundle: Bundle, variant: Variant, model, out: Path, images: list, calib_cache, echo) -> dict:
    """Write the variant's two graphs into ``out`` (fp16 or int8-tensorrt); returns what the manifest records
    about how."""
    echo(f"making {variant.name}: {variant.method}")
    if variant.make == "tensorrt-qdq":
        cache = calibrate(bundle, images, Path(calib_cache) if calib_cache else None, echo)
        detail = make_int8(bundle, variant, out, cache)
    else:
        detail = make_fp16(model, out, get_profile(bundle.export_target))
    for g in GRAPHS:  # every variant keeps its bundle's target: the same opset and IR as the fp32 graphs
        pin_ir_version(out / f"{g}.onnx", get_profile(bundle.export_target).ir_version)
    check_fits_target(bundle, variant, out)
    return detail


def check_fits_target(bundle: Bundle, variant: Variant, out: Path) -> None:
    """A variant of a TensorRT-target bundle must fit the same operator table as its fp32 graphs (int8-cpu is for
    onnxruntime on a CPU: its integer matmuls are not TensorRT's to parse)."""
    from pixdeploy.export.bundle import check_fits_tensorrt

    if variant.target == "cpu":
        return
    profile = get_profile(bundle.export_target)
    for g in GRAPHS:
        check_fits_tensorrt(onnx.load(str(out / f"{g}.onnx")), f"{variant.name} {g}", profile)


def quantize_bundle(bundle_path, precision: str, target: str = "tensorrt", *, echo=print, **options):
    """Add a variant to a bundle once it passes its precision's parity gate. Returns (Bundle, ParityResult).
    ``options``: the fields of `QuantizeOptions`.

    The bundle transaction is the format module's (`adding_variant`): a kill at any moment leaves the bundle
    loading and verifying as before."""
    o = QuantizeOptions(**options)
    variant = choose_variant(precision, target)
    check_request(variant, o)
    bundle = Bundle(bundle_path)  # refuses a damaged bundle before any work
    if variant.name in bundle.variants and not o.force:
        raise PixdeployError(f"bundle {bundle.path} already has variant {variant.name}; pass --force to replace it")
    check_graphs_load(bundle, "fp32")  # the graphs the variant is made from
    ck = source_model(bundle, o.checkpoint)
    if o.calib_cache is not None and not _cache_hit(o.calib_cache):
        check_not_inside(Path(o.calib_cache), bundle.path)  # written: never into the bundle being changed
    job = Job(bundle, variant, o, ck.load_model(), echo,
              calibration_images(o.calib, o.calib_count) if variant.calibrated and not _cache_hit(o.calib_cache)
              else [], o.parity_images or default_parity_images())
    t0 = time.perf_counter()
    with adding_variant(bundle, variant.name, force=o.force, echo=echo) as (staged, entry):
        entry.update(precision=variant.precision, target=variant.target, method=variant.method,
                     graphs={g: {"file": staged.entry_file(f"{g}.onnx")} for g in GRAPHS})
        result = MAKERS[variant.make](job, staged, entry)
        (staged.dir / "parity.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        if not result:
            names = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
            raise ParityError(f"{variant.name} failed its parity gate ({names}); bundle {bundle.path} left as it was")
        entry.update(parity={"passed": True, "checks": {c.name: c.value for c in result.checks}},
                     seconds=round(job.seconds or time.perf_counter() - t0, 1))
    return Bundle(bundle.path), result


@dataclass
class Job:
    """One quantize run: what every maker needs, and the gate they all pass through."""

    bundle: Bundle
    variant: Variant
    options: QuantizeOptions
    model: object  # the PyTorch fp32 model: the gate's reference, and the source of fp16 and fused graphs
    echo: Callable
    images: list  # calibration images (none when the calibration cache holds the ranges)
    parity_images: list
    seconds: float | None = None  # the making, without the gate (set by the maker)

    def gate(self, entry: dict, staged) -> object:
        """The staged variant (as ``entry`` describes it) against PyTorch fp32, with its precision's limits."""
        from pixdeploy.runtime.pipeline import Pipeline

        self.echo(f"checking {self.variant.name} parity against PyTorch fp32")
        with Pipeline.open(staged.view(entry), device="cpu", variant=self.variant.name) as pipe:
            result = check_parity(self.model, pipe, self.parity_images, precision=self.variant.precision,
                                  steps=self.options.steps)
            if self.options.extra_checks is not None:
                result.checks += self.options.extra_checks(pipe)
        return result


def _make_then_gate(job: Job, staged, entry: dict):
    """fp16 and int8-tensorrt: one pair of graphs, then the gate."""
    start = time.perf_counter()
    detail = make_graphs(job.bundle, job.variant, job.model, staged.dir, job.images, job.options.calib_cache,
                         job.echo)
    if detail:
        entry["calibration"] = detail
    job.seconds = time.perf_counter() - start
    return job.gate(entry, staged)


def _measure_then_gate(job: Job, staged, entry: dict):
    """int8-cpu: every candidate scheme made and timed here; the fastest that passes the gate is kept."""
    start = time.perf_counter()
    cache = calibrate(job.bundle, job.images, Path(job.options.calib_cache) if job.options.calib_cache else None,
                      job.echo)
    result = choose_cpu_scheme(job.bundle, staged, entry, cache, job.gate, job.options.measure or measure_cpu_schemes,
                               job.parity_images, job.echo, job.model)
    job.seconds = time.perf_counter() - start
    return result


MAKERS = {"half": _make_then_gate, "tensorrt-qdq": _make_then_gate, "cpu-schemes": _measure_then_gate}


def choose_cpu_scheme(bundle: Bundle, staged, entry: dict, cache: CalibrationCache, gate, measure, images: list,
                      echo, model=None):
    """Make every candidate scheme, time them against fp32 here, then put the fastest through the parity gate,
    the next fastest when it fails, and so on. Records in ``entry`` the scheme, the ratios and the CPU class;
    returns the kept scheme's parity result (or the last failing one, when none passes)."""
    import shutil

    from pixdeploy.cpu import cpu_class

    isa = cpu_class()
    with tempfile.TemporaryDirectory(prefix="pixdeploy-cpu-schemes-") as tmp:
        schemes = cpu_schemes(bundle)
        echo(f"making {len(schemes)} int8 schemes: {', '.join(schemes)}")
        candidates = make_cpu_candidates(bundle, Path(tmp), cache, model)
        echo(f"timing them against fp32 on this CPU ({isa}), interleaved")
        ratios = measure(bundle, candidates, images)
        order = sorted(ratios, key=lambda n: -ratios[n]["score"])
        for n in order:
            r = ratios[n]
            echo(f"  {n}: encoder {r['encoder']['p50']:.2f}x, decoder step {r['decoder_step']['p50']:.2f}x fp32 (p50)")
        rejected, result = {}, None
        for n in order:
            for g in GRAPHS:
                shutil.copyfile(candidates[n][g], staged.dir / f"{g}.onnx")
                pin_ir_version(staged.dir / f"{g}.onnx", get_profile(bundle.export_target).ir_version)
            entry["method"] = CPU_SCHEMES[n].method
            if CPU_SCHEMES[n].fused_bits is not None:
                entry["decoder_form"] = FUSED_FORM
            else:
                entry.pop("decoder_form", None)
            echo(f"trying {n}, the fastest left")
            result = gate(entry, staged)
            if result:
                break
            rejected[n] = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
            echo(f"  {n} failed parity ({rejected[n]})")
        else:
            return result
    entry["cpu_scheme"] = {"scheme": n, "isa": isa, "ratios_vs_fp32": ratios, "rejected_by_parity": rejected,
                           "measured": "onnxruntime CPU, interleaved with fp32: encoder at batch 1, one decoder "
                                       "step at batch 1; ratio = fp32 time / scheme time"}
    if CPU_SCHEMES[n].static:
        entry["calibration"] = {"images": cache.images, "source": cache.source}
    return result


def _cache_hit(calib_cache) -> bool:
    return calib_cache is not None and Path(calib_cache).is_file()

