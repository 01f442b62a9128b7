"""What both int8 targets share, and the int8-tensorrt graphs.

The quantizer is onnxruntime's (`onnxruntime.quantization`): it is already a dependency, writes the IR version
and opset the rest of the bundle uses, and runs on every machine that runs the bundle; NVIDIA ModelOpt would
force IR version <= 10 and pin onnxruntime-gpu 1.24. Both targets quantize the same matrix multiplies
(`weight_matmuls`); attention, norms and the KV cache stay float.

int8-tensorrt is explicit symmetric Q/DQ (zero point 0): weights per output channel, activations per tensor, on
the matrix multiplies of both graphs. What TensorRT 10.x and 11.x build int8 engines from.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx
from pixdeploy.export.calibration import CalibrationCache, decoder_feeds, encoder_feeds, measure_ranges
from pixdeploy.runtime.bundle import GRAPHS, Bundle, CalibrationRecord

from pixdeploy.files import marked_temp, sha256

WEIGHT_OPS = ("MatMul", "Gemm")  # the matrix multiplies: linear layers and the output head


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


def pin_ir_version(path: Path, ir_version: int) -> None:
    """onnxruntime's quantizer writes its own IR version; a variant keeps its bundle's (onnxruntime 1.31
    reads at most 13; TensorRT 10.3's parser reads 10)."""
    proto = onnx.load(str(path))
    if proto.ir_version != ir_version:
        proto.ir_version = ir_version
        onnx.save(proto, str(path))


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


def calibration_record(cache: CalibrationCache) -> CalibrationRecord:
    """What a variant whose ranges came from ``cache`` records about them."""
    return CalibrationRecord(cache.images, cache.source)


def make_tensorrt_qdq(bundle: Bundle, out: Path, cache: CalibrationCache) -> CalibrationRecord:
    """Both graphs with symmetric Q/DQ on their weight matmuls, activations at ``cache``'s ranges. Returns what
    the variant records about the calibration."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    for g in GRAPHS:
        src = bundle.graph_path(g)
        nodes = weight_matmuls(onnx.load(str(src), load_external_data=False))
        with marked_temp("pixdeploy-q-") as tmp, quiet_quantizer():
            quantize_static(
                src, out / f"{g}.onnx", None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(WEIGHT_OPS),
                nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, calibration_cache_path=cache.ort_cache_file(g, Path(tmp)),
                # Zero points 0; Q/DQ on matmul inputs only (TensorRT fuses DQ -> MatMul, and an output
                # Q/DQ would force a requantize before attention and the norms, which stay float).
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS)})
    return calibration_record(cache)
