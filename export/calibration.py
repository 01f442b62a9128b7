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
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pixdeploy.runtime.backends import Runner

from pixdeploy.errors import PixdeployError
from pixdeploy.files import staged_file

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

    recorder = _Recording(pipeline.decoder)
    recording = Pipeline.from_runners(pipeline.bundle, pipeline.encoder, recorder, pipeline.variant)
    for chunk in batches(images):
        embeddings = recording.embed(chunk)
        for _ in recording.decode_steps(embeddings, recording.prompt_ids(), max_new_tokens=steps + 1, stop=None):
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
        """Read a cache and check it belongs to the graphs with sha256 ``expected`` (graph -> sha256)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CalibrationError(f"calibration cache {path} is unreadable ({e})") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise CalibrationError(f"{path} is not a pixdeploy calibration cache")
        if data.get("version") != CACHE_VERSION:
            raise CalibrationError(f"calibration cache {path} has version {data.get('version')}; "
                                   f"this pixdeploy reads version {CACHE_VERSION} (delete it to recalibrate)")
        graphs = data.get("graphs")
        if not isinstance(graphs, dict):
            raise CalibrationError(f"calibration cache {path} is damaged (no graphs)")
        for name, sha in expected.items():
            entry = graphs.get(name)
            if not isinstance(entry, dict) or entry.get("sha256") != sha or not isinstance(entry.get("ranges"), dict):
                raise CalibrationError(f"calibration cache {path} belongs to another model (its {name} graph "
                                       f"differs); delete it or give another --calib-cache")
        return cls(graphs, int(data.get("images", 0)), str(data.get("source", "")))

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


def measure_ranges(graph_path: Path, feeds: Iterable[dict], op_types: list[str], progress=None) -> dict:
    """Run onnxruntime's MinMax calibrator over ``feeds`` on one fp32 graph -> TensorsData as a dict."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="pixdeploy-calib-") as tmp:
        calibrator = create_calibrator(Path(graph_path), op_types,
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(FeedReader(feeds, progress))
        ranges = calibrator.compute_data()
    return json.loads(json.dumps(ranges.to_dict(), cls=_encoder()))


def _encoder():
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    return CalibrationCacheEncoder
