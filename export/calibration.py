"""Calibration for int8: activation ranges measured on real images, streamed, and cached.

The ranges of both graphs come from running the bundle's own fp32 graphs on onnxruntime: the image
encoder on the calibration images, the decoder on the prefill and greedy decode steps those images lead
to (so the KV-cache-fed activations a deployed decoder sees are the ones measured). onnxruntime's
calibrator does the measuring and its ``TensorsData`` is what the cache stores, per graph, next to the
sha256 of the fp32 graph it was measured on: a second run with the same cache reuses the ranges without
running anything, and a cache from another model is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pixdeploy.runtime.backends import Runner

from pixdeploy.errors import PixdeployError
from pixdeploy.files import marked_temp, staged_file
from pixdeploy.jsonfile import BadJson, brief, load_json, need

CACHE_FORMAT = "pixdeploy-calibration"
CACHE_VERSION = 1
BATCH = 8  # images per calibration batch: bounds memory while the calibrator keeps its per-tensor extremes
DECODE_STEPS = 4  # greedy steps measured after each prefill: decode-shaped activations (T = 1) for the ranges


class CalibrationError(PixdeployError):
    """Calibration images or a calibration cache cannot be used."""


def calibration_images(folder: Path | None, count: int | None) -> list:
    """The images to calibrate on: every image under ``folder`` (sorted), else the real sample photos
    shipped with scikit-learn; ``count`` of them spread evenly over the set when given."""
    from pixdeploy.export.parity import default_parity_images

    from pixdeploy.data import find_images

    if count is not None and count < 1:
        raise CalibrationError(f"--calib-count must be at least 1, got {count}")
    if folder is None:
        images = default_parity_images()
    else:
        folder = Path(folder)
        if not folder.is_dir():
            raise CalibrationError(f"calibration folder {folder} does not exist or is not a folder")
        try:
            images = find_images(folder)
        except OSError as e:
            raise CalibrationError(f"cannot read calibration folder {folder}: {e.strerror or e}") from None
        if not images:
            raise CalibrationError(f"calibration folder {folder} holds no images")
    if count is not None and count < len(images):
        step = len(images) / count
        images = [images[int(i * step)] for i in range(count)]
    return images


def batches(images: list, size: int = BATCH) -> Iterator[list]:
    for i in range(0, len(images), size):
        yield images[i : i + size]


class _Recording(Runner):
    """A runner that keeps every feed it is given (the decoder's inputs, KV caches included), then runs it
    on the runner it wraps."""

    def __init__(self, runner: Runner):
        self.runner, self.feeds = runner, []
        self.inputs, self.output_names, self.keep = runner.inputs, runner.output_names, runner.keep

    def infer_impl(self, feed: dict) -> dict:
        self.feeds.append(dict(feed))
        return self.runner.infer_impl(feed)


def encoder_feeds(pipeline, images: list) -> Iterator[dict]:
    """Letterboxed batches, prepared one at a time as the calibrator asks for them."""
    for chunk in batches(images):
        rgb, sizes = pipeline.preprocess(chunk)
        yield {"images": rgb, "sizes": sizes}


def decoder_feeds(pipeline, images: list, steps: int = DECODE_STEPS) -> Iterator[dict]:
    """The decoder inputs of a prefill and ``steps`` greedy decode steps per batch, run on fp32."""
    from pixdeploy.runtime.pipeline import Pipeline
    from pixdeploy.runtime.sampling import Sampling

    recorder = _Recording(pipeline.decoder)
    recording = Pipeline.from_runners(pipeline.bundle, pipeline.encoder, recorder, pipeline.variant)
    greedy = Sampling(max_new_tokens=steps + 1, stop=None)
    for chunk in batches(images):
        embeddings = recording.embed(chunk)
        for _ in recording.decode_steps(embeddings, recording.prompt_ids(), greedy):
            pass
        yield from recorder.feeds
        recorder.feeds = []


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a feed iterator (streamed, never all in memory)."""

    def __init__(self, feeds: Iterable[dict], progress=None):
        self.feeds, self.progress = iter(feeds), progress

    def get_next(self) -> dict | None:
        feed = next(self.feeds, None)
        if feed is not None and self.progress is not None:
            self.progress.update(1)
        return feed

    def __iter__(self):
        return self

    def __next__(self):
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


@dataclass
class CalibrationCache:
    """Activation ranges per graph, tied to the sha256 of the fp32 graph they were measured on."""

    graphs: dict  # graph name -> {"sha256": ..., "ranges": onnxruntime TensorsData.to_dict()}
    images: int
    source: str

    @classmethod
    def load(cls, path: Path, expected: dict[str, str]) -> CalibrationCache:
        """Read a cache and check it belongs to the graphs with sha256 ``expected`` (graph -> sha256) and
        holds, for each, ranges onnxruntime can read: a finite lowest and highest per tensor."""
        try:
            data = load_json(path)
        except OSError as e:
            raise CalibrationError(f"calibration cache {path} is unreadable ({e.strerror or e})") from None
        except BadJson as e:
            raise CalibrationError(f"calibration cache {path} is unreadable: {e}") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise CalibrationError(f"{path} is not a pixdeploy calibration cache")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version != CACHE_VERSION:
            raise CalibrationError(f"calibration cache {path} has version {brief(version)}; "
                                   f"this pixdeploy reads version {CACHE_VERSION} (delete it to recalibrate)")
        try:
            graphs = need(data, "graphs", "an object")
            images = need(data, "images", "an integer", default=0)
            source = need(data, "source", "a string", default="")
        except BadJson as e:
            raise CalibrationError(f"calibration cache {path} is damaged: {e}") from None
        for name, sha in expected.items():
            entry = graphs.get(name)
            if not isinstance(entry, dict) or entry.get("sha256") != sha:
                raise CalibrationError(f"calibration cache {path} belongs to another model (its {name} graph "
                                       f"differs); delete it or give another --calib-cache")
            try:
                check_ranges(need(entry, "ranges", "an object", where=name), name)
            except BadJson as e:
                raise CalibrationError(f"calibration cache {path} is damaged: {e}; delete it to recalibrate") from None
        return cls(graphs, images, source)

    def save(self, path: Path, echo=None) -> None:
        data = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "images": self.images, "source": self.source,
                "graphs": self.graphs}
        with staged_file(Path(path), echo=echo) as tmp:
            tmp.write_text(json.dumps(data), encoding="utf-8")

    def ort_cache_file(self, graph: str, folder: Path) -> Path:
        """The ranges of one graph in onnxruntime's own cache format, for `quantize_static` to read."""
        path = Path(folder) / f"{graph}.calibration.json"
        path.write_text(json.dumps(self.graphs[graph]["ranges"]), encoding="utf-8")
        return path


MINMAX = {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"}  # how measure_ranges calibrates
RANGE_KEYS = {"CLS", "lowest", "highest"}  # a MinMax TensorData as onnxruntime's cache encoder writes it
FLOAT_MAX = {"float32": 3.4028234663852886e38, "float16": 65504.0}


def check_ranges(ranges: dict, graph: str) -> None:
    """``BadJson`` unless ``ranges`` is what `measure_ranges` writes and onnxruntime's `load_tensors_data`
    reads back: MinMax ranges, each tensor's ``lowest`` <= ``highest``, finite (a number or a float32 /
    float16 array of numbers of one length)."""
    at = f"{graph}.ranges"
    tensors = need(ranges, "data", "an object", where=at)
    if ranges.get("calibration_method") != MINMAX:
        raise BadJson(f"field '{at}.calibration_method' is {brief(ranges.get('calibration_method'))}, not MinMax")
    if ranges.get("smooth_quant", False) is not False:
        raise BadJson(f"field '{at}.smooth_quant' is set; these ranges were measured without SmoothQuant")
    if not tensors:
        raise BadJson(f"field '{at}.data' holds no tensors")
    for tensor, entry in tensors.items():
        where = f"{at}.data.{tensor}"
        if not isinstance(entry, dict) or not set(entry) <= RANGE_KEYS:
            raise BadJson(f"field {where!r} is {brief(entry)}, not a tensor's lowest and highest")
        ends = []
        for end in ("lowest", "highest"):
            value = need(entry, end, "a number", "an object", where=where)
            if isinstance(value, dict):
                dtype = value.get("dtype")
                if value.get("CLS") != "numpy.array" or not isinstance(dtype, str) or dtype not in FLOAT_MAX:
                    raise BadJson(f"field '{where}.{end}' is not a float array")
                value = need(value, "data", "a number", "a list", where=f"{where}.{end}")
            else:
                dtype = "float32"  # onnxruntime reads a plain number as float32
            numbers = value if isinstance(value, list) else [value]
            if not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and abs(v) <= FLOAT_MAX[dtype] for v in numbers):
                raise BadJson(f"field '{where}.{end}' is not a {dtype} number or list of them")
            ends.append(numbers)
        low, high = ends
        if len(low) != len(high) or any(lo > hi for lo, hi in zip(low, high)):
            raise BadJson(f"field {where!r} has a lowest above its highest, or of another length")


def measure_ranges(graph_path: Path, feeds: Iterable[dict], op_types: list[str], progress=None) -> dict:
    """Run onnxruntime's MinMax calibrator over ``feeds`` on one fp32 graph -> TensorsData as a dict."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with marked_temp("pixdeploy-calib-") as tmp:
        calibrator = create_calibrator(Path(graph_path), op_types,
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(FeedReader(feeds, progress))
        ranges = calibrator.compute_data()
    return json.loads(json.dumps(ranges.to_dict(), cls=_encoder()))


def _encoder():
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    return CalibrationCacheEncoder
