"""fp16 and int8 variants of a bundle: explicit graphs, chosen per target, gated on parity.

Precision is decided in the ONNX (TensorRT 11 has no fp16/int8 builder flags nor implicit int8
calibration), so each variant is a pair of graphs that any TensorRT, or onnxruntime, runs as written:

- ``fp16`` — exported from the half-precision PyTorch model, its fp32 islands kept (`pixdeploy.export.fp16`).
- ``int8-tensorrt`` — explicit symmetric Q/DQ on the matrix multiplies of both graphs, calibrated on real
  images; what TensorRT 10.x and 11.x build int8 engines from (`pixdeploy.export.int8`).
- ``int8-cpu`` — the int8 scheme measured fastest on onnxruntime CPU on the machine that quantizes, among
  those that pass the parity gate (`pixdeploy.export.cpu_schemes`).

`VARIANTS` is the table of what can be made; each row names its `Maker`, which holds how its graphs are made
and gated. Every variant passes its precision's parity gate against the PyTorch fp32 model (`Job.gate`)
before the bundle names it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from pixdeploy.export.calibration import CalibrationError, calibration_images
from pixdeploy.export.cpu_schemes import (  # noqa: F401 -- the scheme names benchmarks and tests import from here
    CPU_SCHEMES,
    UNMEASURED,
    CpuScheme,
    choose_cpu_scheme,
    make_cpu_candidates,
    make_cpu_scheme,
)
from pixdeploy.export.fp16 import FP32_ATTRIBUTES, make_fp16, mark_fp32_islands  # noqa: F401 -- as above
from pixdeploy.export.int8 import (  # noqa: F401 -- as above
    WEIGHT_OPS,
    calibrate,
    make_tensorrt_qdq,
    pin_ir_version,
    quiet_quantizer,
    weight_matmuls,
)
from pixdeploy.export.parity import ParityError, check_parity, default_parity_images
from pixdeploy.export.profiles import get_profile
from pixdeploy.runtime.backends import check_graphs_load
from pixdeploy.runtime.bundle import DEFAULT_VARIANT, GRAPHS, PARITY_REPORT, Bundle, VariantRecord, adding_variant

from pixdeploy.errors import PixdeployError
from pixdeploy.files import check_not_inside, sweep_marked_temp_dirs


@dataclass(frozen=True)
class Variant:
    """One row of the table of what `quantize` can make."""

    name: str  # the variant's name in the bundle
    precision: str  # the row of the parity threshold table
    target: str  # what it is for: any, tensorrt, cpu
    method: str  # how the graphs are made, recorded in the manifest
    calibrated: bool = False  # takes --calib/--calib-count/--calib-cache (activation ranges)
    make: str = "half"  # how the graphs are made and gated: a key of `MAKERS`
    # TensorRT parses its graphs, so they must fit the operator table of the bundle's fp32 graphs (int8-cpu's
    # integer matmuls are onnxruntime's, not TensorRT's to parse).
    parsed_by_tensorrt: bool = True


@dataclass(frozen=True)
class Maker:
    """How a variant's graphs are made."""

    # One pair of graphs into a folder: (bundle, out, PyTorch model, activation ranges or None) -> what the
    # variant records about the calibration (a `CalibrationRecord`, or None).
    graphs: Callable
    # The whole run into the staged variant: (job, staged, its `VariantRecord` so far) -> (the record of the
    # graphs kept, their parity result).
    run: Callable


VARIANTS = {
    ("fp16", "tensorrt"): Variant("fp16", "fp16", "any", "half-precision export with fp32 islands"),
    ("fp16", "cpu"): Variant("fp16", "fp16", "any", "half-precision export with fp32 islands"),
    ("int8", "tensorrt"): Variant("int8-tensorrt", "int8", "tensorrt",
                                  "onnxruntime QDQ, symmetric int8, per-channel weights, MinMax calibration",
                                  calibrated=True, make="tensorrt-qdq"),
    ("int8", "cpu"): Variant("int8-cpu", "int8", "cpu",
                             "onnxruntime int8, the scheme measured fastest on this CPU that passes parity",
                             calibrated=True, make="cpu-schemes", parsed_by_tensorrt=False),
}
PRECISIONS = ("fp16", "int8")
TARGETS = ("tensorrt", "cpu")


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

    @property
    def cache_hit(self) -> bool:
        """The calibration cache exists: its ranges are reused, no image is read."""
        return self.calib_cache is not None and Path(self.calib_cache).is_file()


def choose_variant(precision: str, target: str) -> Variant:
    if precision not in PRECISIONS:
        raise PixdeployError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise PixdeployError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    return VARIANTS[(precision, target)]


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

    def calibration(self):
        """The activation ranges of both fp32 graphs (`calibrate`: from the cache when it holds them)."""
        cache = self.options.calib_cache
        return calibrate(self.bundle, self.images, Path(cache) if cache else None, self.echo)

    def gate(self, record: VariantRecord, staged) -> object:
        """The staged variant (as ``record`` describes it) against PyTorch fp32, with its precision's limits."""
        from pixdeploy.runtime.pipeline import Pipeline

        self.echo(f"checking {self.variant.name} parity against PyTorch fp32")
        with Pipeline.open(staged.view(record.to_dict()), device="cpu", variant=self.variant.name) as pipe:
            result = check_parity(self.model, pipe, self.parity_images, precision=self.variant.precision,
                                  steps=self.options.steps)
            if self.options.extra_checks is not None:
                result.checks += self.options.extra_checks(pipe)
        return result


def make_graphs(job: Job, out: Path):
    """Write the variant's two graphs into ``out``, calibrated first when the variant is; returns what the
    variant records about the calibration (a `CalibrationRecord`, or None)."""
    variant = job.variant
    job.echo(f"making {variant.name}: {variant.method}")
    cache = job.calibration() if variant.calibrated else None
    detail = MAKERS[variant.make].graphs(job.bundle, out, job.model, cache)
    profile = get_profile(job.bundle.export_target)
    for g in GRAPHS:  # every variant keeps its bundle's target: the same opset and IR as the fp32 graphs
        pin_ir_version(out / f"{g}.onnx", profile.ir_version)
    if variant.parsed_by_tensorrt:
        check_fits_target(job.bundle, variant, out)
    return detail


def make_int8(bundle: Bundle, variant: Variant, out: Path, cache):
    """``variant``'s int8 graphs into ``out`` without the gate (int8-cpu's without measuring: `UNMEASURED`'s);
    ``cache``: the activation ranges."""
    return MAKERS[variant.make].graphs(bundle, out, None, cache)


def check_fits_target(bundle: Bundle, variant: Variant, out: Path) -> None:
    """A variant TensorRT parses must fit the same operator table as its bundle's fp32 graphs."""
    from pixdeploy.export.bundle import check_fits_tensorrt

    profile = get_profile(bundle.export_target)
    for g in GRAPHS:
        check_fits_tensorrt(onnx.load(str(out / f"{g}.onnx")), f"{variant.name} {g}", profile)


def _make_then_gate(job: Job, staged, record: VariantRecord) -> tuple:
    """fp16 and int8-tensorrt: one pair of graphs, then the gate."""
    start = time.perf_counter()
    record = replace(record, calibration=make_graphs(job, staged.dir))
    job.seconds = time.perf_counter() - start
    return record, job.gate(record, staged)


def _measure_then_gate(job: Job, staged, record: VariantRecord) -> tuple:
    """int8-cpu: every candidate scheme made and timed here; the fastest that passes the gate is kept."""
    start = time.perf_counter()
    record, result = choose_cpu_scheme(job, staged, record, job.calibration())
    job.seconds = time.perf_counter() - start
    return record, result


def _fp16_graphs(bundle: Bundle, out: Path, model, _cache) -> None:
    make_fp16(model, out, get_profile(bundle.export_target))


def _tensorrt_qdq_graphs(bundle: Bundle, out: Path, _model, cache):
    return make_tensorrt_qdq(bundle, out, cache)


def _unmeasured_cpu_graphs(bundle: Bundle, out: Path, _model, _cache) -> None:
    UNMEASURED.make(bundle, out, None)


MAKERS = {"half": Maker(_fp16_graphs, _make_then_gate),
          "tensorrt-qdq": Maker(_tensorrt_qdq_graphs, _make_then_gate),
          "cpu-schemes": Maker(_unmeasured_cpu_graphs, _measure_then_gate)}


def quantize_bundle(bundle_path, precision: str, target: str = "tensorrt", *, echo=print, **options):
    """Add a variant to a bundle once it passes its precision's parity gate. Returns (Bundle, ParityResult).
    ``options``: the fields of `QuantizeOptions`.

    The bundle transaction is the format module's (`adding_variant`): a kill at any moment leaves the bundle
    loading and verifying as before."""
    o = QuantizeOptions(**options)
    variant = choose_variant(precision, target)
    check_request(variant, o)
    sweep_marked_temp_dirs(echo)  # what a quantize killed with -9 left in the temporary folder
    bundle = Bundle(bundle_path)
    check_graphs_load(bundle, DEFAULT_VARIANT)  # the graphs the variant is made from: a damaged one is refused first
    if variant.name in bundle.variants and not o.force:
        raise PixdeployError(f"bundle {bundle.path} already has variant {variant.name}; pass --force to replace it")
    ck = source_model(bundle, o.checkpoint)
    if o.calib_cache is not None and not o.cache_hit:
        check_not_inside(Path(o.calib_cache), bundle.path)  # written: never into the bundle being changed
    images = calibration_images(o.calib, o.calib_count) if variant.calibrated and not o.cache_hit else []
    job = Job(bundle, variant, o, ck.load_model(), echo, images, o.parity_images or default_parity_images())
    t0 = time.perf_counter()
    with adding_variant(bundle, variant.name, force=o.force, echo=echo) as (staged, entry):
        record = VariantRecord(variant.precision, variant.target,
                               {g: staged.entry_file(f"{g}.onnx") for g in GRAPHS}, variant.method)
        record, result = MAKERS[variant.make].run(job, staged, record)
        (staged.dir / PARITY_REPORT).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        if not result:
            names = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
            raise ParityError(f"{variant.name} failed its parity gate ({names}); bundle {bundle.path} left as it was")
        # The gate's record, the same shape every variant keeps (fp32's included).
        entry.update(replace(record, parity=result.record(),
                             seconds=round(job.seconds or time.perf_counter() - t0, 1)).to_dict())
    return Bundle(bundle.path), result
