"""The bundle's typed records, each frozen, with a strict ``from_dict`` (the manifest form in; anything but the
documented shape refused with `RecordError`, which says where) and ``to_dict`` (the manifest form out), so that
``R.from_dict(r.to_dict()) == r`` for every record. A manifest is untrusted: these are the only parsers of its
records, and the reader (`reader.Bundle`) adds what needs the files or the config (checksums, bounds, graphs).

Text is kept as written (escaped only when printed: `describe`, `pixdeploy.text.printable`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pixdeploy.runtime.engine_header import MAX_ENGINE_BATCH

from pixdeploy.text import printable

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")  # what a recorded tensor may hold
MAX_DIMS = 8
MAX_DIM = 1 << 31  # a recorded dim past this is no model's (the reader bounds dims by the config too)
MAX_TEXT = 4096  # a recorded string longer than this is not ours


class RecordError(ValueError):
    """A manifest record of the wrong shape: the message says which field and what is wrong."""


# ---- strict field readers ----

def _where(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _obj(value, where: str, required: tuple = (), optional: tuple = ()) -> dict:
    """``value`` as an object with string keys, every required key present and no key outside the two lists."""
    if not isinstance(value, dict):
        raise RecordError(f"{where or 'record'} is {type(value).__name__}, not an object")
    missing = [k for k in required if k not in value]
    unknown = [k for k in value if k not in required and k not in optional]
    if missing:
        raise RecordError(f"{where or 'record'} has no {missing[0]!r}")
    if unknown:
        raise RecordError(f"{where or 'record'} has an unknown field {printable(repr(unknown[0]))[:60]}")
    return value


def _text(value, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty) or len(value) > MAX_TEXT or "\x00" in value:
        raise RecordError(f"{where} is {printable(repr(value))[:60]}, not a string")
    return value


def _int(value, where: str, lo: int = 0, hi: int = MAX_DIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RecordError(f"{where} is {printable(repr(value))[:60]}, not an integer in {lo}..{hi}")
    return value


def _number(value, where: str) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise OverflowError
    except OverflowError:  # an integer past a float's range is no measurement either
        raise RecordError(f"{where} is {printable(repr(value))[:60]}, not a finite number") from None
    return float(value)


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise RecordError(f"{where} is {printable(repr(value))[:60]}, not true or false")
    return value


def _optional(d: dict, key: str, read, where: str):
    return None if d.get(key) is None else read(d[key], _where(where, key))


def _names(value, where: str, read) -> dict:
    """An object of name -> record, read in order (the order of a signature's tensors is the graph's)."""
    if not isinstance(value, dict):
        raise RecordError(f"{where} is {type(value).__name__}, not an object")
    return {_text(k, where): read(v, _where(where, k)) for k, v in value.items()}


# ---- graph signatures ----

def is_symbol(value) -> bool:
    """A symbolic dim of a recorded shape ("batch", "tokens"): an identifier of at most 32 characters."""
    return isinstance(value, str) and value.isidentifier() and len(value) <= 32


def _dim(value, where: str):
    if is_symbol(value):
        return value
    return _int(value, where, 0, MAX_DIM)


def _shape(value, where: str) -> tuple:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise RecordError(f"{where} is {printable(repr(value))[:80]}, not a list of at most {MAX_DIMS} dims")
    return tuple(_dim(d, f"{where}[{i}]") for i, d in enumerate(value))


def _dtype(value, where: str) -> str:
    if value not in DTYPES or not isinstance(value, str):
        raise RecordError(f"{where} is {printable(repr(value))[:60]}, not one of {', '.join(DTYPES)}")
    return value


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its dtype and shape (symbolic dims are identifiers: "batch")."""

    dtype: str
    shape: tuple

    @classmethod
    def from_dict(cls, d, where: str = "tensor") -> TensorSpec:
        d = _obj(d, where, ("dtype", "shape"))
        return cls(_dtype(d["dtype"], _where(where, "dtype")), _shape(d["shape"], _where(where, "shape")))

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class CachePair:
    """One KV-cache tensor of the decoder: fed as ``past``, returned as ``present``."""

    past: str
    present: str
    dtype: str
    shape: tuple  # symbolic dims are strings ("batch")

    @classmethod
    def from_dict(cls, d, where: str = "cache") -> CachePair:
        d = _obj(d, where, ("past", "present", "dtype", "shape"))
        return cls(_text(d["past"], _where(where, "past")), _text(d["present"], _where(where, "present")),
                   _dtype(d["dtype"], _where(where, "dtype")), _shape(d["shape"], _where(where, "shape")))

    def to_dict(self) -> dict:
        return {"past": self.past, "present": self.present, "dtype": self.dtype, "shape": list(self.shape)}


SIGNATURE_KEYS = ("inputs", "outputs", "cache", "purpose")


@dataclass(frozen=True)
class GraphSignature:
    """What every variant's graph of one name takes and gives, in the graph's order; the decoder's also pairs
    its KV-cache inputs with its outputs."""

    inputs: dict  # name -> TensorSpec, in the graph's order
    outputs: dict
    cache: tuple = ()  # CachePair, the decoder's only
    purpose: str | None = None

    @classmethod
    def from_dict(cls, d, where: str = "graph") -> GraphSignature:
        # file: the exporter's spec names it there, and so did format 1
        d = _obj(d, where, SIGNATURE_KEYS[:2], (*SIGNATURE_KEYS[2:], "file"))
        inputs = _names(d["inputs"], _where(where, "inputs"), TensorSpec.from_dict)
        outputs = _names(d["outputs"], _where(where, "outputs"), TensorSpec.from_dict)
        if not inputs or not outputs:
            raise RecordError(f"{where} records no {'inputs' if not inputs else 'outputs'}")
        cache = d.get("cache", [])
        if not isinstance(cache, list):
            raise RecordError(f"{where}.cache is not a list")
        return cls(inputs, outputs, tuple(CachePair.from_dict(c, f"{where}.cache[{i}]") for i, c in enumerate(cache)),
                   _optional(d, "purpose", _text, where))

    def to_dict(self) -> dict:
        out = {"inputs": {k: v.to_dict() for k, v in self.inputs.items()},
               "outputs": {k: v.to_dict() for k, v in self.outputs.items()}}
        if self.purpose is not None:
            out["purpose"] = self.purpose
        if self.cache:
            out["cache"] = [c.to_dict() for c in self.cache]
        return out


# ---- a variant and what its making measured ----

@dataclass(frozen=True)
class ParityRecord:
    """What a variant's parity gate measured against PyTorch fp32: the one shape every variant records (the
    exporter's fp32 and every quantized variant alike); ``checks`` in the gate's order."""

    precision: str | None
    passed: bool
    checks: tuple = ()  # (name, value)

    @classmethod
    def from_dict(cls, d, where: str = "parity") -> ParityRecord:
        d = _obj(d, where, ("passed",), ("precision", "checks"))
        checks = _names(d.get("checks", {}), _where(where, "checks"), _number)
        return cls(_optional(d, "precision", _text, where), _bool(d["passed"], _where(where, "passed")),
                   tuple(checks.items()))

    def to_dict(self) -> dict:
        out = {"passed": self.passed, "checks": dict(self.checks)}
        if self.precision is not None:
            out["precision"] = self.precision
        return out


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration an int8 variant's ranges came from."""

    images: int
    source: str

    @classmethod
    def from_dict(cls, d, where: str = "calibration") -> CalibrationRecord:
        d = _obj(d, where, ("images", "source"))
        return cls(_int(d["images"], _where(where, "images"), 0, 1 << 40), _text(d["source"], _where(where, "source"),
                                                                                 empty=True))

    def to_dict(self) -> dict:
        return {"images": self.images, "source": self.source}


STAGES = ("encoder", "decoder_step")
QUANTILES = ("p50", "p90", "p99")


@dataclass(frozen=True)
class CpuSchemeRecord:
    """What `quantize --target cpu` measured and chose: the scheme kept, the CPU class it was measured on, every
    candidate's ratios to fp32 (scheme -> stage -> quantile, and a score) and why a faster one was refused."""

    scheme: str
    isa: str
    ratios_vs_fp32: dict = field(default_factory=dict)
    rejected_by_parity: dict = field(default_factory=dict)  # scheme -> the failing checks, as text
    measured: str | None = None  # how, in words

    @classmethod
    def from_dict(cls, d, where: str = "cpu_scheme") -> CpuSchemeRecord:
        d = _obj(d, where, ("scheme", "isa"), ("ratios_vs_fp32", "rejected_by_parity", "measured"))

        def ratios(r, at):
            r = _obj(r, at, ("score",), STAGES)
            return {**{st: {q: _number(v, f"{at}.{st}.{q}") for q, v in _obj(r[st], f"{at}.{st}", QUANTILES).items()}
                       for st in STAGES if st in r}, "score": _number(r["score"], f"{at}.score")}

        return cls(_text(d["scheme"], _where(where, "scheme")), _text(d["isa"], _where(where, "isa")),
                   _names(d.get("ratios_vs_fp32", {}), _where(where, "ratios_vs_fp32"), ratios),
                   _names(d.get("rejected_by_parity", {}), _where(where, "rejected_by_parity"),
                          lambda v, at: _text(v, at, empty=True)),
                   _optional(d, "measured", _text, where))

    def to_dict(self) -> dict:
        out = {"scheme": self.scheme, "isa": self.isa, "ratios_vs_fp32": self.ratios_vs_fp32,
               "rejected_by_parity": self.rejected_by_parity}
        if self.measured is not None:
            out["measured"] = self.measured
        return out


@dataclass(frozen=True)
class VariantRecord:
    """One precision of the bundle's graphs: what it is for, its files, how it was made and what its gate
    measured. ``decoder_form`` is None for the plain decoder every backend runs (`layout.DECODER_FORMS`)."""

    precision: str
    target: str
    graphs: dict  # graph name -> file inside the bundle
    method: str | None = None
    parity: ParityRecord | None = None
    seconds: float | None = None
    calibration: CalibrationRecord | None = None
    cpu_scheme: CpuSchemeRecord | None = None
    decoder_form: str | None = None

    @classmethod
    def from_dict(cls, d, where: str = "variant") -> VariantRecord:
        d = _obj(d, where, ("precision", "target", "graphs"),
                 ("method", "parity", "seconds", "calibration", "cpu_scheme", "decoder_form"))
        # Variants quantized by earlier versions of format 2 also copied the graph's signature next to its file;
        # the manifest's top-level signatures are the ones checked, so those copies are read past.
        graphs = _names(d["graphs"], _where(where, "graphs"),
                        lambda g, at: _text(_obj(g, at, ("file",), SIGNATURE_KEYS)["file"], f"{at}.file"))
        return cls(_text(d["precision"], _where(where, "precision")), _text(d["target"], _where(where, "target")),
                   graphs, _optional(d, "method", _text, where),
                   _optional(d, "parity", ParityRecord.from_dict, where), _optional(d, "seconds", _number, where),
                   _optional(d, "calibration", CalibrationRecord.from_dict, where),
                   _optional(d, "cpu_scheme", CpuSchemeRecord.from_dict, where),
                   _optional(d, "decoder_form", _text, where))

    def to_dict(self) -> dict:
        out = {"precision": self.precision, "target": self.target,
               "graphs": {g: {"file": f} for g, f in self.graphs.items()}}
        for key in ("method", "seconds", "decoder_form"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("parity", "calibration", "cpu_scheme"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        return out


# ---- engines and files ----

def _plugin(value, where: str) -> str:
    value = _text(value, where)
    if "/" in value or "\\" in value or not value.isprintable():
        raise RecordError(f"{where} is {printable(repr(value))[:60]}, not the file name of a library")
    return value


@dataclass(frozen=True)
class EngineSet:
    """One `build-engine` run recorded in the manifest: a folder of engines for one variant, GPU and TensorRT."""

    name: str  # folder under engines/
    variant: str
    tensorrt: str
    gpu: str
    compute_capability: str
    export_profile: str
    max_batch: int
    version_compatible: bool = False
    plugins: tuple = ()  # file names of the plugin libraries it was built with (never loaded from the bundle)
    files: dict = field(default_factory=dict)  # graph -> path inside the bundle

    @classmethod
    def from_dict(cls, name, d, where: str = "engine set") -> EngineSet:
        d = _obj(d, where, ("variant", "tensorrt", "gpu", "compute_capability", "export_profile", "max_batch",
                            "files"), ("version_compatible", "plugins"))
        plugins = d.get("plugins", [])
        if not isinstance(plugins, list):
            raise RecordError(f"{where}.plugins is not a list")
        return cls(_text(name, where), *(_text(d[k], _where(where, k)) for k in
                                         ("variant", "tensorrt", "gpu", "compute_capability", "export_profile")),
                   _int(d["max_batch"], _where(where, "max_batch"), 1, MAX_ENGINE_BATCH),
                   _bool(d.get("version_compatible", False), _where(where, "version_compatible")),
                   tuple(_plugin(p, f"{where}.plugins[{i}]") for i, p in enumerate(plugins)),
                   _names(d["files"], _where(where, "files"), _text))

    def to_dict(self) -> dict:
        return {"variant": self.variant, "tensorrt": self.tensorrt, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "export_profile": self.export_profile,
                "max_batch": self.max_batch, "version_compatible": self.version_compatible,
                "plugins": list(self.plugins), "files": dict(self.files)}

    def describe(self) -> str:
        return printable(f"{self.name}: variant {self.variant}, TensorRT {self.tensorrt}"
                         f"{' (version-compatible)' if self.version_compatible else ''} on {self.gpu} "
                         f"(sm {self.compute_capability}), batch 1..{self.max_batch}")


def engine_set_name(gpu_slug: str, trt_version: str, variant: str) -> str:
    """``<gpu>-trt<version>-<variant>``: fp32 and int8 engines for one GPU and TensorRT live side by side."""
    return f"{gpu_slug}-trt{trt_version}-{variant}"


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle in the checksum table."""

    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, d, where: str = "file") -> FileEntry:
        d = _obj(d, where, ("sha256",), ("bytes",))
        digest = _text(d["sha256"], _where(where, "sha256"))
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise RecordError(f"{where}.sha256 is {printable(repr(digest))[:80]}, not a sha256 in hex")
        return cls(digest, _int(d.get("bytes", 0), _where(where, "bytes"), 0, 1 << 50))

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class SourceRecord:
    """The checkpoint a bundle was exported from."""

    checkpoint: str
    checkpoint_step: int | None = None

    @classmethod
    def from_dict(cls, d, where: str = "source") -> SourceRecord:
        d = _obj(d, where, ("checkpoint",), ("checkpoint_step",))
        return cls(_text(d["checkpoint"], _where(where, "checkpoint")),
                   _optional(d, "checkpoint_step", lambda v, at: _int(v, at, 0, 1 << 62), where))

    def to_dict(self) -> dict:
        out = {"checkpoint": self.checkpoint}
        if self.checkpoint_step is not None:
            out["checkpoint_step"] = self.checkpoint_step
        return out


@dataclass(frozen=True)
class Provenance:
    """Where a bundle came from, as its exporter records it: the producer, the checkpoint, the export profile's
    settings and the graphs' ONNX opset and IR (descriptive: the graphs themselves are what runs)."""

    producer: str
    source: SourceRecord | None = None
    export_profile: dict | None = None
    onnx: dict | None = None

    def to_dict(self) -> dict:
        out = {"producer": self.producer, "source": None if self.source is None else self.source.to_dict(),
               "export_profile": self.export_profile, "onnx": self.onnx}
        return {k: v for k, v in out.items() if v is not None}


RECORDS = (TensorSpec, CachePair, GraphSignature, ParityRecord, CalibrationRecord, CpuSchemeRecord, VariantRecord,
           FileEntry, SourceRecord)  # with EngineSet (named by its folder): every record of the manifest
