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
- ``int8-cpu`` — what is fast on onnxruntime CPU (chosen by ``benchmarks/quantized_cpu.py``): dynamic
  quantization of the same matrix multiplies (activation ranges measured per call, signed per-channel
  weights); symmetric Q/DQ runs no faster than fp32 there.

The quantizer is onnxruntime's (`onnxruntime.quantization`): it is already a dependency, writes the
IR version and opset the rest of the bundle uses, and runs on every machine that runs the bundle;
NVIDIA ModelOpt would force IR version <= 10 and pin onnxruntime-gpu 1.24.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from pixdeploy.export.calibration import (
    CalibrationCache,
    CalibrationError,
    calibration_images,
    decoder_feeds,
    encoder_feeds,
    measure_ranges,
)
from pixdeploy.export.onnx_export import IR_VERSION, graph_specs
from pixdeploy.export.parity import ParityError, check_parity, default_parity_images
from pixdeploy.runtime.bundle import DEFAULT_VARIANT, Bundle, rewrite_manifest

from pixdeploy.errors import PixdeployError
from pixdeploy.files import _TEMP, _pid_alive, locked_dir, sha256, staged_dir

GRAPHS = ("image_encoder", "decoder")
VARIANTS_DIR = "variants"
WEIGHT_OPS = ("MatMul", "Gemm")  # the matrix multiplies: linear layers and the output head


@dataclass(frozen=True)
class Variant:
    """One row of the table of what `quantize` can make."""

    name: str  # the variant's name in the bundle
    precision: str  # the row of the parity threshold table
    target: str  # what it is for: any, tensorrt, cpu
    method: str  # how the graphs are made, recorded in the manifest


VARIANTS = {
    ("fp16", "tensorrt"): Variant("fp16", "fp16", "any", "half-precision export with fp32 islands"),
    ("fp16", "cpu"): Variant("fp16", "fp16", "any", "half-precision export with fp32 islands"),
    ("int8", "tensorrt"): Variant("int8-tensorrt", "int8", "tensorrt",
                                  "onnxruntime QDQ, symmetric int8, per-channel weights, MinMax calibration"),
    ("int8", "cpu"): Variant("int8-cpu", "int8", "cpu", "onnxruntime dynamic int8, per-channel weights"),
}
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
# `stash_type`; Attention's softmax follows `softmax_precision`. Both are set explicitly, not left to defaults.
FP32_ATTRIBUTES = {"RMSNormalization": "stash_type", "LayerNormalization": "stash_type",
                   "Attention": "softmax_precision"}


def mark_fp32_islands(proto: onnx.ModelProto) -> None:
    """Norm statistics and softmax in fp32 on every fused node, in the graph and in function bodies."""
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    for node in nodes:
        attr = FP32_ATTRIBUTES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if attr:
            kept = [a for a in node.attribute if a.name != attr]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute(attr, onnx.TensorProto.FLOAT)])


def make_fp16(model, out: Path, manifest: dict) -> dict:
    from pixdeploy.export.onnx_export import export_graph
    from pixdeploy.export.profiles import bundle_profile

    half = half_model(model)
    wrappers = _fp16_wrappers()
    profile = bundle_profile(manifest)  # the operator set the bundle's fp32 graphs were exported for
    for spec in graph_specs(model.cfg):
        path = out / f"{spec.name}.onnx"
        proto = export_graph(half, spec, path, profile, wrapper=wrappers[spec.name](half).eval())
        mark_fp32_islands(proto)
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
    pipe = Pipeline(bundle, device="cpu")
    graphs = {}
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


def make_int8(bundle: Bundle, variant: Variant, out: Path, cache: CalibrationCache | None) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

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
            else:
                quantize_dynamic(src, out / f"{g}.onnx", op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                                 per_channel=True, weight_type=QuantType.QInt8)
        pin_ir_version(out / f"{g}.onnx")
    return {"images": cache.images, "source": cache.source} if variant.target == "tensorrt" else {}


def pin_ir_version(path: Path) -> None:
    proto = onnx.load(str(path))
    if proto.ir_version != IR_VERSION:
        proto.ir_version = IR_VERSION  # onnxruntime 1.31 reads at most IR 13; the bundle's graphs all use one
        onnx.save(proto, str(path))


# ---- the bundle ----


def bundle_seeing(bundle: Bundle, name: str, entry: dict, folder: Path) -> Bundle:
    """The same bundle, unverified, seeing variant ``name`` (its manifest ``entry``) with its graphs in
    ``folder`` under the bundle, where they are being written: what the parity gate loads."""
    staged = Bundle(bundle.path, verify=False)
    staged.manifest = copy.deepcopy(bundle.manifest)
    staged.manifest.setdefault("variants", {})[name] = {
        **entry, "graphs": {g: {**d, "file": folder.relative_to(bundle.path).joinpath(f"{g}.onnx").as_posix()}
                            for g, d in entry["graphs"].items()}}
    return staged


def _variant_files(bundle_path: Path, folder: Path) -> dict:
    return {p.relative_to(bundle_path).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(folder.iterdir()) if p.is_file()}


def sweep_orphans(bundle: Bundle, echo) -> None:
    """Remove variant folders no manifest entry names: left by a run killed before (or just after)
    the manifest switched. Folders of a run still going (live PID in a staged name) are left alone."""
    root = bundle.path / VARIANTS_DIR
    if not root.is_dir():
        return
    used = {Path(g["file"]).parts[1] for v in bundle.variants.values() for g in (v.get("graphs") or {}).values()
            if isinstance(g, dict) and Path(g.get("file", "")).parts[:1] == (VARIANTS_DIR,)}
    for p in sorted(root.iterdir()):
        m = _TEMP.match(p.name)
        if p.name in used or (m and _pid_alive(int(m["pid"]))):
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        echo(f"removed {p.relative_to(bundle.path)}, left by an interrupted run")


def quantize_bundle(bundle_path, precision: str, target: str = "tensorrt", *, checkpoint=None, calib=None,
                    calib_count: int | None = None, calib_cache=None, parity_images: list | None = None,
                    extra_checks: Callable | None = None, steps: int = 8, force: bool = False, echo=print):
    """Add a variant to a bundle once it passes its precision's parity gate. Returns (Bundle, ParityResult).

    Written in two steps so that a kill at any moment leaves the bundle loading and verifying as before:
    the graphs go into a new folder under ``variants/`` (staged, renamed into place), then the manifest is
    replaced in one rename. ``extra_checks(pipeline) -> [Check]`` adds checks to the gate (the demo's
    held-out reading). ``steps``: greedy tokens compared per image (an answer's length, not a page's:
    past a model's answer its tokens are guesses that quantization noise may flip).
    """
    from pixdeploy.checkpoint import Checkpoint

    variant = choose_variant(precision, target)
    int8 = variant.precision == "int8"
    calibrated = variant.name == "int8-tensorrt"  # int8-cpu measures activation ranges per call
    if not calibrated and (calib is not None or calib_count is not None or calib_cache is not None):
        why = "fp16 needs no calibration" if not int8 else "int8 for cpu measures activation ranges as it runs"
        raise PixdeployError(f"--calib, --calib-count and --calib-cache are for int8 --target tensorrt; {why}")
    if calib_count is not None and calib_count < 1:
        raise CalibrationError(f"--calib-count must be at least 1, got {calib_count}")
    bundle = Bundle(bundle_path)  # refuses a damaged bundle before any work
    if variant.name in (bundle.manifest.get("variants") or {}) and not force:
        raise PixdeployError(f"bundle {bundle.path} already has variant {variant.name}; pass --force to replace it")
    checkpoint = checkpoint or (bundle.manifest.get("source") or {}).get("checkpoint")
    if not checkpoint:
        raise PixdeployError(f"bundle {bundle.path} does not name its checkpoint; pass --checkpoint")
    ck = Checkpoint(checkpoint)
    if ck.config.to_dict() != bundle.config.to_dict():
        raise PixdeployError(f"checkpoint {ck.path} is not the model of bundle {bundle.path} (configs differ)")
    images = calibration_images(calib, calib_count) if calibrated and not _cache_hit(calib_cache) else []
    with locked_dir(bundle.path, echo):  # another quantize may be switching its folder in right now
        sweep_orphans(Bundle(bundle.path, verify=False), echo)

    model = ck.load_model()
    t0 = time.perf_counter()
    folder = bundle.path / VARIANTS_DIR / f"{variant.name}-{time.time_ns():x}"  # new each run: never half-replaced
    folder.parent.mkdir(exist_ok=True)
    with contextlib.ExitStack() as switching:
        with staged_dir(folder, what="pixdeploy variant", echo=echo) as tmp:
            echo(f"making {variant.name}: {variant.method}")
            if int8:
                cache = (calibrate(bundle, images, Path(calib_cache) if calib_cache else None, echo)
                         if calibrated else None)
                detail = make_int8(bundle, variant, tmp, cache)
            else:
                detail = make_fp16(model, tmp, bundle.manifest)
            seconds = time.perf_counter() - t0

            entry = {"precision": variant.precision, "target": variant.target, "method": variant.method,
                     "graphs": {s.name: {**s.to_dict(), "file": f"{VARIANTS_DIR}/{folder.name}/{s.name}.onnx"}
                                for s in graph_specs(bundle.config)}}
            if detail:
                entry["calibration"] = detail
            staged = bundle_seeing(bundle, variant.name, entry, tmp)
            echo(f"checking {variant.name} parity against PyTorch fp32")
            from pixdeploy.runtime.pipeline import Pipeline

            pipe = Pipeline(staged, device="cpu", variant=variant.name)
            result = check_parity(model, pipe, parity_images or default_parity_images(), precision=variant.precision,
                                  steps=steps)
            if extra_checks is not None:
                result.checks += extra_checks(pipe)
            record = result.to_dict()
            (tmp / "parity.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
            if not result:
                names = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
                raise ParityError(f"{variant.name} failed its parity gate ({names}); "
                                  f"bundle {bundle.path} left as it was")
            # Held from before the folder is renamed into place until the manifest names it: no other writer
            # reads the manifest in between, or sweeps the folder as an orphan.
            switching.enter_context(locked_dir(bundle.path, echo))
        entry.update(parity={"passed": True, "checks": {c.name: c.value for c in result.checks}},
                     seconds=round(seconds, 1))
        _switch_in(bundle.path, variant, entry, folder, force, echo)
    return Bundle(bundle.path), result


def _switch_in(bundle_path: Path, variant: Variant, entry: dict, folder: Path, force: bool, echo) -> None:
    """Name the variant's folder in the manifest (one rename), then remove the folder it replaced.
    The caller holds the bundle's lock; the manifest is read again here, so whatever another writer
    added while this variant was being made (an engine set, another variant) is kept."""

    def add(manifest: dict) -> None:
        variants = manifest.setdefault("variants", {})
        old = variants.get(variant.name)
        if old and not force:
            shutil.rmtree(folder)
            raise PixdeployError(f"another pixdeploy process added variant {variant.name} to bundle {bundle_path} "
                                 "while this one ran; pass --force to replace it")
        variants.setdefault(DEFAULT_VARIANT, {"precision": "fp32", "target": "any", "graphs": manifest["graphs"],
                                              "parity": manifest.get("parity")})
        variants[variant.name] = entry
        files = manifest["files"]
        if old:  # --force: the replaced variant's files leave the checksum table with it
            for g in old.get("graphs", {}).values():
                files.pop(g["file"], None)
            files.pop(f"{Path(next(iter(old['graphs'].values()))['file']).parent.as_posix()}/parity.json", None)
        files.update(_variant_files(bundle_path, folder))

    rewrite_manifest(bundle_path, add, echo)
    sweep_orphans(Bundle(bundle_path, verify=False), lambda *_: None)  # the replaced variant's folder


def _cache_hit(calib_cache) -> bool:
    return calib_cache is not None and Path(calib_cache).is_file()

