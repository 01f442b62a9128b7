"""The bundle format: its one reader (`Bundle`) and its one writer (`write_new_manifest`, `adding_variant`,
`add_engine_set`). No other module reads or writes ``manifest.json``.

    bundle/
        manifest.json          format + version, producer, model config, special ids, variants, engine sets,
                               and the sha256 of every other file
        image_encoder.onnx     uint8 images + sizes -> window embeddings (pixdeploy:: custom ops inside)
        decoder.onnx           embeddings + positions + KV cache -> last logits + new cache
        text_embeddings.npy    the word-embedding table, looked up in numpy
        tokenizer.json
        parity.json            what the export measured against PyTorch
        variants/NAME-ID/      more precisions of the same graphs (fp16, int8-tensorrt, int8-cpu)
        engines/GPU-trtVERSION-VARIANT/
                               TensorRT engines of one variant for one GPU model and TensorRT version

The manifest (format version 2):
- ``variants`` maps every variant, ``fp32`` included, to its precision, target, graphs and parity record;
- ``graphs`` holds the signatures every variant shares (names, dtypes, symbolic dims); the decoder's
  entry records its KV-cache pairs (``cache``: past input, present output, dtype, shape), which every
  consumer reads from there instead of re-deriving names;
- ``engines`` maps an engine folder to what it was built for (`EngineSet`), and `select_engine_set` is
  the one rule that picks a set for a variant, a TensorRT version and a GPU;
- ``files`` holds the sha256 of every file. A bundle is untrusted: every path it names must resolve
  inside it with no symlink on the way, and a file is read only through `Bundle.checked`, which
  compares its checksum first.

Bundles of format version 1 (no explicit fp32 variant, no cache pairs, engine folders without the
variant) are read by `_upgrade_v1`; their engine sets are not used (rebuild them).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixdeploy.config import SPECIAL_TOKENS, ModelConfig
from pixdeploy.errors import PixdeployError
from pixdeploy.files import locked_dir, parse_temp, sha256, staged_dir, staged_file, writing
from pixdeploy.jsonfile import BadJson, load_json
from pixdeploy.text import printable
from pixdeploy.tokenizer import Tokenizer

FORMAT = "pixdeploy-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_VARIANT = "fp32"  # what runs unless the user names another variant
GRAPHS = ("image_encoder", "decoder")
# How a variant's decoder graph is written, when not the plain form every backend runs (manifest: a variant's
# "decoder_form"): "fused-gqa-v1", onnxruntime's fused CPU operators (`pixdeploy.runtime.fused_decoder`).
DECODER_FORMS = ("fused-gqa-v1",)
VARIANTS_DIR = "variants"
ENGINES_DIR = "engines"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; a larger one is not ours
_VARIANT_FOLDER = re.compile(r"^(?P<variant>[a-z0-9][a-z0-9-]*)-(?P<id>[0-9a-f]{8,})$")  # what adding_variant names
# Written by adding_variant into every variant folder it makes, before anything else: the sweep removes a
# folder only when it holds this marker (a name alone says nothing: a user may name a folder anything).
VARIANT_MARKER = ".pixdeploy-variant"
_MARKER_FORMAT = "pixdeploy-variant-folder"


class BundleError(PixdeployError):
    """A bundle is missing, damaged, or of a format this pixdeploy cannot read."""


@dataclass(frozen=True)
class CachePair:
    """One KV-cache tensor of the decoder: fed as ``past``, returned as ``present``."""

    past: str
    present: str
    dtype: str
    shape: tuple  # symbolic dims are strings ("batch")

    def to_dict(self) -> dict:
        return {"past": self.past, "present": self.present, "dtype": self.dtype, "shape": list(self.shape)}


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


# ---- paths: inside the bundle, no symlink on the way ----

def inside(root: Path, name, what: str = "file") -> Path:
    """``root / name`` for a relative path a bundle names, refused (one line, nothing opened) when it is
    absolute, climbs out, or passes through a symlink; a missing component is left for the caller."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"damaged bundle {root}: manifest names {printable(repr(name))} as a {what}")
    parts = Path(name).parts
    if Path(name).is_absolute() or any(p in ("..", ".") for p in parts) or "\\" in name:
        raise BundleError(f"damaged bundle {root}: manifest names {printable(name)}, a path outside the bundle")
    path = Path(root)
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):  # missing: the caller says what was expected
            return Path(root).joinpath(*parts)
        except OSError as e:
            raise BundleError(f"cannot read {path}: {e.strerror or e}") from None
        if stat.S_ISLNK(mode):
            raise BundleError(f"damaged bundle {root}: {printable(name)} passes through a symlink "
                              f"({printable(str(path.relative_to(root)))}); a bundle holds plain files only")
    return path


def real_dir(root: Path, name: str) -> Path | None:
    """``root/name`` when it is a real folder (not a symlink); None when absent; refused otherwise."""
    path = inside(root, name, "folder")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(mode):
        raise BundleError(f"damaged bundle {root}: {name} is not a folder")
    return path


def _read_json(path: Path, what: str, root: Path) -> object:
    """A JSON file of a bundle, read by the one strict reader (`pixdeploy.jsonfile`); any fault is one line."""
    try:
        return load_json(path, MAX_MANIFEST_BYTES)
    except OSError as e:
        raise BundleError(f"damaged bundle {root}: {what} unreadable ({e.strerror or e})") from None
    except BadJson as e:  # not UTF-8, not JSON, NaN or Infinity, numbers past 64 bits, nested too deeply, too large
        raise BundleError(f"damaged bundle {root}: {what} unreadable ({printable(str(e)[:200])})") from None


# ---- reading ----

class Bundle:
    """A bundle on disk. Constructing one runs `verify`: the one verification every reader uses
    (`Pipeline.load`, `inspect`, export's own check), so a bundle one command refuses no other accepts."""

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        manifest = inside(self.path, "manifest.json")
        if not manifest.is_file():
            kind = "not a folder" if self.path.exists() and not self.path.is_dir() else "manifest.json missing"
            raise BundleError(f"no bundle at {self.path} ({kind})")
        m = _read_json(manifest, "manifest.json", self.path)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BundleError(f"{self.path} is not a pixdeploy bundle")
        version = m.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise BundleError(f"bundle {self.path} has format version {printable(repr(version))}; this pixdeploy "
                              f"reads versions {', '.join(map(str, READABLE_VERSIONS))} (re-export it with "
                              "`pixdeploy export CHECKPOINT -o BUNDLE`)")
        self.manifest = _upgrade_v1(m) if version == 1 else m
        self.format_version = version
        self._checked: set = set()  # file names hashed, and ("external", graph) checked for external data
        self._embeddings = None
        try:
            self.config = ModelConfig.from_dict(self._field("config", dict))
        except (KeyError, TypeError, ValueError, PixdeployError) as e:
            raise BundleError(f"damaged bundle {self.path}: config: {printable(str(e))}") from None
        self.graphs = self._field("graphs", dict)
        self._tokenizer = None
        if verify:
            self.verify()

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            try:
                self._tokenizer = Tokenizer.load(self.checked("tokenizer.json"))
            except (KeyError, TypeError, ValueError, PixdeployError) as e:
                raise BundleError(f"damaged bundle {self.path}: tokenizer.json: {printable(str(e))}") from None
        return self._tokenizer

    def _field(self, name: str, kind: type):
        value = self.manifest.get(name)
        if not isinstance(value, kind) or not value:
            raise BundleError(f"damaged bundle {self.path}: manifest.json has no {name!r} field"
                              + ("" if value is None else f" of the right kind (found {type(value).__name__})"))
        return value

    @property
    def producer(self) -> str:
        return printable(str(self.manifest.get("producer", "?")))

    @property
    def export_target(self) -> str:
        """The name of the export target the graphs were written for (`pixdeploy.export.profiles` holds what each
        means); bundles written before targets existed were for onnxruntime."""
        recorded = self.manifest.get("export_profile") or {}
        name = recorded.get("name", "onnxruntime") if isinstance(recorded, dict) else None
        if not isinstance(name, str):
            raise BundleError(f"damaged bundle {self.path}: manifest.json export_profile is malformed")
        return name

    @property
    def source_checkpoint(self) -> str | None:
        """The checkpoint the bundle was exported from (a path on the machine that exported it). A relative path
        is relative to the bundle's folder, never to the current folder: a command run from elsewhere finds the
        same checkpoint, not a same-named one where it runs."""
        source = self.manifest.get("source")
        checkpoint = source.get("checkpoint") if isinstance(source, dict) else None
        if not isinstance(checkpoint, str) or not checkpoint or "\x00" in checkpoint:
            return None
        return checkpoint if os.path.isabs(checkpoint) else os.path.normpath(self.path / checkpoint)

    @property
    def onnx_info(self) -> str:
        """'opset N, IR M' as recorded (descriptive: the graphs themselves are what runs)."""
        info = self.manifest.get("onnx") if isinstance(self.manifest.get("onnx"), dict) else {}
        return printable(f"opset {info.get('opset', '?')}, IR {info.get('ir_version', '?')}")

    # -- files --

    @property
    def files(self) -> dict:
        return self._field("files", dict)

    def checked(self, name: str) -> Path:
        """The path of a file the manifest lists, once it is inside the bundle, a plain file, and matches
        its checksum (hashed once per Bundle). The only way a file of a bundle is opened."""
        path = inside(self.path, name)
        info = self.files.get(name)
        if not isinstance(info, dict):
            raise BundleError(f"damaged bundle {self.path}: {printable(str(name))} is not among the checksummed files")
        if name not in self._checked:
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                raise BundleError(f"damaged bundle {self.path}: {printable(name)} is missing") from None
            if not stat.S_ISREG(mode):
                raise BundleError(f"damaged bundle {self.path}: {printable(name)} is not a plain file")
            if sha256(path) != info.get("sha256"):
                raise BundleError(f"damaged bundle {self.path}: {printable(name)} does not match its checksum")
            self._checked.add(name)
        return path

    def verify(self) -> None:
        """Everything a bundle must be before anything runs: manifest fields present, every listed file
        inside the bundle and matching its checksum (engine plans excepted: they are checked when a set is
        selected, as they can be large), every variant's graphs among the listed files, the decoder's cache
        pairs among its inputs and outputs, the graphs' signatures those the config implies, a tokenizer that
        loads and an embeddings table of the configured shape. Raises one BundleError naming what is wrong."""
        for name in self.files:
            inside(self.path, name)  # every path refused before any is opened
        for name in self.files:
            if not name.startswith(f"{ENGINES_DIR}/"):
                self.checked(name)
        for name in ("tokenizer.json", "text_embeddings.npy"):
            if name not in self.files:
                raise BundleError(f"damaged bundle {self.path}: manifest lists no {name}")
        self._check_signatures()
        self.tokenizer  # noqa: B018 -- loads and checks it
        for variant in self.variants:
            for graph in GRAPHS:
                self.graph_path(graph, variant)
        self.cache_pairs()
        self.engine_sets()
        self._embeddings = self.text_embeddings()  # read once: Pipeline takes the verified table

    def _check_signatures(self) -> None:
        """The recorded signatures must be the ones this config gives: a manifest whose config was edited
        away from its graphs is refused here, not when a shape mismatch surfaces mid-run."""
        cfg = self.config
        S, W, C = cfg.image_size, cfg.n_windows, cfg.dim
        expect = {
            ("image_encoder", "inputs", "images"): ["images", S, S, 3],
            ("image_encoder", "inputs", "sizes"): ["images", 2],
            ("image_encoder", "outputs", "window_embeddings"): ["images", W, C],
            ("decoder", "inputs", "embeds"): ["batch", "tokens", C],
            ("decoder", "outputs", "logits"): ["batch", cfg.vocab_out],
        }
        self._check_tensor_records(cfg)
        for (graph, io, tensor), shape in expect.items():
            entry = self.graphs.get(graph)
            got = entry.get(io, {}).get(tensor) if isinstance(entry, dict) and isinstance(entry.get(io), dict) else None
            recorded = got.get("shape") if isinstance(got, dict) else got
            if recorded != shape:
                raise BundleError(f"damaged bundle {self.path}: manifest config does not match graph {graph}'s "
                                  f"{tensor} (recorded {printable(repr(recorded))}, config gives {shape})")

    def _check_tensor_records(self, cfg) -> None:
        """Every recorded tensor of every graph: a dtype the runtimes know and a shape of at most 8 dims, each
        a symbol or an integer no larger than the config's largest size (a shape of 10**15 is no model's), so
        nothing is sized from a record before the record is known to be sane."""
        from pixdeploy.runtime.runner import NP_TYPES

        bound = max(cfg.max_seq_len, cfg.image_size, cfg.dim, cfg.vocab_out, cfg.mlp_hidden, cfg.n_windows, 3)
        for graph in GRAPHS:
            entry = self.graphs.get(graph)
            if not isinstance(entry, dict):
                raise BundleError(f"damaged bundle {self.path}: manifest.json records no graph {graph}")
            for io in ("inputs", "outputs"):
                tensors = entry.get(io)
                if not isinstance(tensors, dict) or not tensors:
                    raise BundleError(f"damaged bundle {self.path}: graph {graph} records no {io}")
                for name, t in tensors.items():
                    where = f"damaged bundle {self.path}: graph {graph}'s {io[:-1]} {printable(repr(name))}"
                    if not isinstance(t, dict) or not isinstance(t.get("dtype"), str) or t["dtype"] not in NP_TYPES:
                        dtype = t.get("dtype") if isinstance(t, dict) else None
                        raise BundleError(f"{where} has dtype {printable(repr(dtype))[:60]}, not one of "
                                          f"{', '.join(NP_TYPES)}")
                    shape = t.get("shape")
                    if not isinstance(shape, list) or len(shape) > 8 or not all(
                            (isinstance(d, str) and d.isidentifier() and len(d) <= 32)
                            or (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= bound) for d in shape):
                        raise BundleError(f"{where} has shape {printable(repr(shape))[:80]}, not dims of at most "
                                          f"{bound} (the config's largest size) or symbols")

    # -- variants --

    @property
    def variants(self) -> dict[str, dict]:
        """Every variant: name -> {precision, target, graphs, parity}; fp32 first."""
        listed = self._field("variants", dict)
        if not isinstance(listed.get(DEFAULT_VARIANT), dict):
            raise BundleError(f"damaged bundle {self.path}: manifest.json lists no fp32 variant")
        out = {DEFAULT_VARIANT: listed[DEFAULT_VARIANT]}
        for k, v in listed.items():
            if not isinstance(v, dict):
                raise BundleError(f"damaged bundle {self.path}: variant {printable(repr(k))} is malformed")
            out.setdefault(k, v)
        return out

    def variant(self, name: str = DEFAULT_VARIANT) -> dict:
        variants = self.variants
        if name not in variants:
            raise BundleError(f"bundle {self.path} has no variant {printable(repr(name))}; it has: "
                              f"{printable(', '.join(variants))}")
        return variants[name]

    def graph_path(self, graph: str, variant: str = DEFAULT_VARIANT) -> Path:
        """The file of ``graph`` (image_encoder, decoder) in ``variant``, checksummed: the one place that
        knows the layout."""
        graphs = self.variant(variant).get("graphs")
        entry = graphs.get(graph) if isinstance(graphs, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise BundleError(f"damaged bundle {self.path}: variant {printable(variant)} lists no graph {graph!r}")
        path = self.checked(entry["file"])
        self._check_external_data(entry["file"], path)
        return path

    def _check_external_data(self, name: str, path: Path) -> None:
        """A graph may keep tensors in external files, which a runtime opens by the path the graph names: each
        must lie inside the bundle, with no symlink, and be among the checksummed files (checked here)."""
        if ("external", name) in self._checked:
            return
        with open(path, "rb") as f:
            uses_external = EXTERNAL_DATA_MARK in f.read()
        if uses_external:
            try:
                import onnx
            except ImportError:
                raise BundleError(f"bundle {self.path}: {printable(name)} keeps tensors in external files; "
                                  "pip install onnx so they can be checked before loading") from None
            try:
                proto = onnx.load(str(path), load_external_data=False)
            except Exception as e:  # onnx raises protobuf's own errors for a damaged file
                raise BundleError(f"damaged bundle {self.path}: {printable(name)} does not parse "
                                  f"({printable(str(e).splitlines()[0][:200])})") from None
            folder = Path(name).parent
            for tensor in _external_tensors(proto):
                location = dict((e.key, e.value) for e in tensor.external_data).get("location", "")
                if not location or Path(location).is_absolute() or ".." in Path(location).parts:
                    raise BundleError(f"damaged bundle {self.path}: {printable(name)} keeps "
                                      f"{printable(tensor.name)} in {printable(location)}, a path outside the bundle")
                self.checked((folder / location).as_posix() if str(folder) != "." else location)
        self._checked.add(("external", name))

    def decoder_form(self, name: str = DEFAULT_VARIANT) -> str | None:
        """The form of ``name``'s decoder graph: None for the plain form, else one of `DECODER_FORMS`."""
        form = self.variant(name).get("decoder_form")
        if form is not None and form not in DECODER_FORMS:
            raise BundleError(f"damaged bundle {self.path}: variant {printable(name)} records decoder form "
                              f"{printable(repr(form))}; this pixdeploy knows {', '.join(DECODER_FORMS)}")
        return form

    def cpu_scheme(self, name: str = DEFAULT_VARIANT) -> dict | None:
        """What `quantize --target cpu` measured and chose for ``name``: {scheme, isa, ratios_vs_fp32 (scheme ->
        stage -> p50/p90/p99, and score), rejected_by_parity}; None for a variant without one. Untrusted text is
        escaped and numbers that are not numbers are dropped."""
        record = self.variant(name).get("cpu_scheme")
        if not isinstance(record, dict):
            return None
        scheme, isa = record.get("scheme"), record.get("isa")
        if not isinstance(scheme, str) or not isinstance(isa, str):
            raise BundleError(f"damaged bundle {self.path}: variant {printable(name)} records a malformed cpu scheme")

        def number(v):
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        ratios = {}
        raw = record.get("ratios_vs_fp32") if isinstance(record.get("ratios_vs_fp32"), dict) else {}
        for n, r in raw.items():
            if isinstance(r, dict):
                ratios[printable(str(n))] = {
                    **{st: {q: number(v) for q, v in r[st].items()} for st in ("encoder", "decoder_step")
                       if isinstance(r.get(st), dict)}, "score": number(r.get("score"))}
        rejected = record.get("rejected_by_parity") if isinstance(record.get("rejected_by_parity"), dict) else {}
        return {"scheme": printable(scheme), "isa": printable(isa), "ratios_vs_fp32": ratios,
                "rejected_by_parity": {printable(str(k)): printable(str(v)) for k, v in rejected.items()}}

    # -- the decoder's KV cache --

    def cache_pairs(self) -> list[CachePair]:
        """The decoder's cache tensors as recorded at export: (past input, present output, dtype, shape)."""
        dec = self.graphs.get("decoder") if isinstance(self.graphs.get("decoder"), dict) else {}
        listed = dec.get("cache")
        inputs, outputs = dec.get("inputs") or {}, dec.get("outputs") or {}
        if not isinstance(listed, list) or not listed:
            raise BundleError(f"damaged bundle {self.path}: the decoder entry records no KV-cache pairs")
        pairs = []
        for item in listed:
            try:
                pair = CachePair(str(item["past"]), str(item["present"]), str(item["dtype"]), tuple(item["shape"]))
            except (KeyError, TypeError):
                raise BundleError(f"damaged bundle {self.path}: a KV-cache entry of the decoder is malformed") from None
            past, present = inputs.get(pair.past), outputs.get(pair.present)
            if not isinstance(past, dict) or not isinstance(present, dict):
                raise BundleError(f"damaged bundle {self.path}: KV-cache pair {printable(pair.past)} -> "
                                  f"{printable(pair.present)} is not among the decoder's inputs and outputs")
            # The pair is exactly the tensors it joins: one dtype, one shape (its batch the only symbol).
            if not (past.get("dtype") == present.get("dtype") == pair.dtype
                    and past.get("shape") == present.get("shape") == list(pair.shape)
                    and pair.shape[:1] == ("batch",) and all(isinstance(d, int) for d in pair.shape[1:])):
                raise BundleError(f"damaged bundle {self.path}: KV-cache pair {printable(pair.past)} -> "
                                  f"{printable(pair.present)} records {printable(pair.dtype)}"
                                  f"{printable(list(pair.shape))}, not the dtype and shape of both tensors it joins")
            pairs.append(pair)
        # Every decoder input but the step's own (embeds, positions) is a past, every output but the logits a
        # present, each in exactly one pair, and each pair joins the i-th past input with the i-th present output
        # in the recorded order (the list itself may come in any order; the runners check the recorded order
        # against the graph itself): a pair that feeds one layer's cache to another is refused.
        pasts = [n for n in inputs if n not in ("embeds", "input_pos")]
        presents = [n for n in outputs if n != "logits"]
        got = [(p.past, p.present) for p in pairs]
        if len(set(got)) != len(got) or set(got) != set(zip(pasts, presents)) or len(pasts) != len(presents):
            raise BundleError(f"damaged bundle {self.path}: the decoder's KV-cache pairs "
                              f"{printable(got[:4])[:160]} do not pair its cache inputs with its cache outputs in "
                              "the graph's order")
        return pairs

    # -- engine sets --

    def engine_sets(self) -> list[EngineSet]:
        """Every engine set the manifest records, parsed; each file it names is checked to lie inside the bundle
        and among the checksummed files (hashed when the set is used)."""
        raw = self.manifest.get("engines") or {}
        if not isinstance(raw, dict):
            raise BundleError(f"damaged bundle {self.path}: manifest.json engines is malformed")
        sets = []
        for name, r in raw.items():
            try:
                files = {str(g): str(f) for g, f in r["files"].items()}
                s = EngineSet(str(name), str(r["variant"]), str(r["tensorrt"]), str(r["gpu"]),
                              str(r["compute_capability"]), str(r["export_profile"]), int(r["max_batch"]),
                              r.get("version_compatible") is True, tuple(str(p) for p in r.get("plugins") or ()),
                              files)
                from pixdeploy.runtime.engine_header import MAX_ENGINE_BATCH

                if isinstance(r["max_batch"], bool) or not isinstance(r["max_batch"], int) \
                        or not 1 <= s.max_batch <= MAX_ENGINE_BATCH:
                    raise ValueError("max_batch")
                if any(not p or "/" in p or "\\" in p or not p.isprintable() for p in s.plugins):
                    raise ValueError("plugins")  # file names of libraries, never paths
            except (KeyError, TypeError, ValueError, AttributeError):
                raise BundleError(f"damaged bundle {self.path}: engine set {printable(repr(name))} is malformed") \
                    from None
            for f in files.values():
                inside(self.path, f)
                if not f.startswith(f"{ENGINES_DIR}/{name}/") or f not in self.files:
                    raise BundleError(f"damaged bundle {self.path}: engine set {printable(name)} names "
                                      f"{printable(f)}, which is not a checksummed file of its folder")
            sets.append(s)
        return sets

    def engine_headers(self, engine_set: EngineSet) -> dict[str, dict]:
        """graph -> header of each engine of a set (its file checksummed, its header read once to the strict schema
        of `engine_header`), checked against this bundle and the set's record: the graph and variant it is for,
        the variant's precision, the TensorRT, GPU and compute capability the set records, the sha256 of the
        graph it was built from, and profiles over exactly the graph's inputs (their ranks and fixed dims, batch
        dims within the set's max batch, other dims within the context). The one check of an engine before
        anything uses it (triton, inspect)."""
        from pixdeploy.runtime.engine_header import read_header

        variant = self.variant(engine_set.variant)
        headers = {}
        for graph, path in self.engine_files(engine_set).items():
            header = read_header(path)
            graph_file = variant["graphs"][graph]["file"]
            self.graph_path(graph, engine_set.variant)  # checksummed: the recorded sha256 is the file's
            expected = {"graph": graph, "variant": engine_set.variant, "tensorrt": engine_set.tensorrt,
                        "gpu": engine_set.gpu, "compute_capability": engine_set.compute_capability,
                        "precision": variant.get("precision"),
                        "version_compatible": engine_set.version_compatible,
                        "max_batch": engine_set.max_batch,
                        "source_sha256": self.files[graph_file]["sha256"]}
            problems = [f"its {k} is {header.get(k, False if k == 'version_compatible' else None)!r:.80}, "
                        f"not {v!r:.80}" for k, v in expected.items()
                        if header.get(k, False if k == "version_compatible" else v) != v]
            if any(p.startswith("its source_sha256") for p in problems):
                problems = [f"it was not built from this bundle's {graph_file} (another source sha256)"] + \
                    [p for p in problems if not p.startswith("its source_sha256")]
            problems += self._profile_problems(graph, header["profiles"], engine_set.max_batch)
            if problems:
                raise BundleError(printable(f"engine {path} does not match bundle {self.path}: "
                                            + "; ".join(problems[:3])))
            headers[graph] = header
        return headers

    def _profile_problems(self, graph: str, profiles: list, max_batch: int) -> list[str]:
        inputs = self.graphs[graph].get("inputs") or {}
        first = next(iter(inputs.values()), {}).get("shape") or [None]
        batch_dims = {first[0]} if isinstance(first[0], str) else set()  # the batch: the first input's first dim
        problems = []
        for p in profiles:
            shapes = p["shapes"]
            if set(shapes) != set(inputs):
                unknown, absent = sorted(set(shapes) - set(inputs)), sorted(set(inputs) - set(shapes))
                problems.append(f"profile {p['name']} names inputs {unknown} the graph does not have"
                                if unknown else f"profile {p['name']} leaves out the inputs {absent}")
                continue
            for name, t in inputs.items():
                lo, opt, hi = shapes[name]
                if len(hi) != len(t["shape"]):
                    problems.append(f"profile {p['name']} gives {name} rank {len(hi)}, the graph {len(t['shape'])}")
                    continue
                for d, a, c in zip(t["shape"], lo, hi):
                    bound = max_batch if d in batch_dims else self.config.max_seq_len
                    if (isinstance(d, int) and not a == c == d) or (isinstance(d, str) and not 1 <= a <= c <= bound):
                        problems.append(f"profile {p['name']} gives {name} dims {lo}..{hi}, outside the graph's "
                                        f"{t['shape']} (batch at most {max_batch})")
                        break
        return problems

    def engine_files(self, engine_set: EngineSet) -> dict[str, Path]:
        """graph -> engine file of a set, each checksummed."""
        missing = [g for g in GRAPHS if g not in engine_set.files]
        if missing:
            raise BundleError(f"damaged bundle {self.path}: engine set {engine_set.name} has no {', '.join(missing)}")
        return {g: self.checked(engine_set.files[g]) for g in GRAPHS}

    # -- tables --

    def text_embeddings(self) -> np.ndarray:
        if self._embeddings is not None:
            return self._embeddings
        path = self.checked("text_embeddings.npy")
        want = (self.config.text_vocab, self.config.dim)
        try:  # the header first: the shape and dtype it declares are checked before numpy allocates anything
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                data_bytes = os.fstat(f.fileno()).st_size - f.tell()
        except (OSError, ValueError, EOFError) as e:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy: {printable(str(e))}") from None
        if dtype.hasobject:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy: holds Python objects, which would "
                              "need pickle")
        if dtype != np.dtype("<f4") or tuple(shape) != want or fortran or data_bytes != 4 * want[0] * want[1]:
            raise BundleError(f"damaged bundle {self.path}: text embeddings have shape {tuple(shape)} ({dtype}, "
                              f"{data_bytes} bytes of data), expected {want} float32")
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy: {printable(str(e))}") from None
        if not isinstance(table, np.ndarray) or table.dtype != np.float32:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy is not a float32 array")
        if table.shape != (self.config.text_vocab, self.config.dim):
            raise BundleError(f"damaged bundle {self.path}: text embeddings have shape {table.shape}, "
                              f"expected {(self.config.text_vocab, self.config.dim)}")
        if not np.isfinite(table).all():
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy holds NaN or infinite values")
        return table

    def parity_record(self) -> dict | None:
        """parity.json as the exporter wrote it: {precision, passed, checks: [(name, value)]}; None if absent."""
        if "parity.json" not in self.files:
            return None
        parity = _read_json(self.checked("parity.json"), "parity.json", self.path)
        try:
            checks = [(printable(str(c["name"])), c["value"]) for c in parity["checks"]]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for _, v in checks):
                raise ValueError("a check's value is not a finite number")
            return {"precision": printable(str(parity["precision"])), "passed": parity["passed"] is True,
                    "checks": [(n, float(v)) for n, v in checks]}
        except (KeyError, TypeError, ValueError, OverflowError):
            raise BundleError(f"damaged bundle {self.path}: parity.json is malformed") from None


# How an ONNX TensorProto names an external file: its external_data entry with key "location" (field 1 of
# StringStringEntryProto, length 8). A graph without these bytes keeps every tensor inside itself.
EXTERNAL_DATA_MARK = b"\x0a\x08location"


def _external_tensors(proto):
    """Every tensor of a model stored in an external file: initializers of the graph, of its subgraphs and
    functions, and Constant attributes."""
    import onnx

    def graphs(g):
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    nodes = [n for f in proto.functions for n in f.node]
    for g in graphs(proto.graph):
        yield from (t for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        nodes += list(g.node)
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                yield attr.t


def _upgrade_v1(m: dict) -> dict:
    """A format-1 manifest as format 2, in memory: its top-level graphs are the fp32 variant, its cache pairs
    follow the past_/present_ names format 1 used, and its engine sets (folders without the variant, no file
    list) are dropped: rebuild them with `pixdeploy build-engine`."""
    m = copy.deepcopy(m)
    graphs = m.get("graphs")
    variants = m.get("variants") if isinstance(m.get("variants"), dict) else {}
    if isinstance(graphs, dict):
        variants = {DEFAULT_VARIANT: {"precision": "fp32", "target": "any", "graphs": graphs,
                                      "parity": m.get("parity")}, **variants}
        dec = graphs.get("decoder")
        if isinstance(dec, dict) and isinstance(dec.get("inputs"), dict):
            dec["cache"] = [{"past": k, "present": "present_" + k[len("past_"):], **v}
                            for k, v in dec["inputs"].items() if k.startswith("past_") and isinstance(v, dict)]
    m["variants"] = variants
    m["engines"] = {}
    return m


# ---- writing ----

def _rewrite(path: Path, change: Callable[[dict], None], echo=None) -> None:
    """Read the manifest afresh, let ``change`` edit it, write it back in one rename. Callers hold the
    bundle's lock, so what another writer added since is kept."""
    bundle = Bundle(path, verify=False)
    manifest = copy.deepcopy(bundle.manifest)
    manifest["format_version"] = FORMAT_VERSION  # a format-1 bundle is written back as format 2
    change(manifest)
    with staged_file(Path(path) / "manifest.json", echo=echo) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def file_entries(root: Path, folder: Path) -> dict:
    """Checksum-table entries for every plain file under ``folder`` (paths relative to ``root``)."""
    return {p.relative_to(root).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def write_new_manifest(folder: Path, cfg, graphs: dict, extra: dict, producer: str) -> None:
    """The manifest of a bundle being exported into ``folder``: the fp32 variant, the signatures (the decoder's
    with its cache pairs) and the checksum of every file already written there."""
    files = {k: v for k, v in file_entries(folder, folder).items() if k != "manifest.json"}
    variants = {DEFAULT_VARIANT: {"precision": "fp32", "target": "any",
                                  "graphs": {g: {"file": d["file"]} for g, d in graphs.items()},
                                  "parity": extra.get("parity")}}
    graphs = {g: {k: v for k, v in d.items() if k != "file"} for g, d in graphs.items()}  # files: per variant
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "producer": producer, "config": cfg.to_dict(),
        "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)}, "graphs": graphs,
        **extra, "variants": variants, "engines": {}, "files": files,
    }
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, folder / "manifest.json")


def is_bundle_dir(path: Path) -> bool:
    """A folder a pixdeploy exporter wrote (so --force may replace it): it has a pixdeploy manifest."""
    try:
        return Bundle(path, verify=False).manifest.get("format") == FORMAT
    except PixdeployError:
        return False


def mark_variant_folder(folder: Path, variant: str) -> None:
    """Mark ``folder`` as one `adding_variant` made (`sweep_variants` removes nothing else)."""
    (folder / VARIANT_MARKER).write_text(json.dumps({"format": _MARKER_FORMAT, "variant": variant}),
                                         encoding="utf-8")


def _made_by_adding_variant(folder: Path) -> bool:
    """Whether ``folder`` holds the marker `mark_variant_folder` writes: a small regular file (not a
    symlink) of the right format."""
    marker = folder / VARIANT_MARKER
    try:
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return False
        info = load_json(marker, max_bytes=4096)
    except (OSError, BadJson):
        return False
    return isinstance(info, dict) and info.get("format") == _MARKER_FORMAT


def sweep_variants(bundle_path: Path, echo) -> None:
    """Remove variant folders no manifest entry names, left by a run killed before its manifest switch.
    Only what `adding_variant` made is ever removed — a real folder (not a symlink) named ``VARIANT-ID``, or
    its staging sibling, that holds the marker it writes first — and only when no running process is writing
    it; anything else (a folder of the user's, whatever its name) is left alone."""
    root = real_dir(bundle_path, VARIANTS_DIR)
    if root is None:
        return
    bundle = Bundle(bundle_path, verify=False)
    used = {Path(g["file"]).parts[1] for v in bundle.variants.values() for g in (v.get("graphs") or {}).values()
            if isinstance(g, dict) and isinstance(g.get("file"), str) and Path(g["file"]).parts[:1] == (VARIANTS_DIR,)
            and len(Path(g["file"]).parts) > 2}
    for p in sorted(root.iterdir()):
        if p.name in used or p.is_symlink() or not p.is_dir():
            continue
        temp = parse_temp(p.name)  # (target, writer still running) for a staging folder
        if temp is not None and temp[1]:
            continue
        if not _VARIANT_FOLDER.match(temp[0] if temp else p.name) or not _made_by_adding_variant(p):
            continue  # not a folder pixdeploy made: never deleted
        shutil.rmtree(p)
        echo(f"removed {VARIANTS_DIR}/{p.name}, left by an interrupted run")


class StagedVariant:
    """A variant being written: its graphs go into ``dir``; ``view(entry)`` is the bundle seeing it (what the
    parity gate loads); the variant joins the manifest when the `adding_variant` block ends without error."""

    def __init__(self, bundle: Bundle, name: str, final: Path, tmp: Path):
        self.bundle, self.name, self.final, self.dir = bundle, name, final, tmp

    def entry_file(self, filename: str) -> str:
        """The manifest path of a file of this variant once it is in place."""
        return self.final.relative_to(self.bundle.path).joinpath(filename).as_posix()

    def view(self, entry: dict) -> Bundle:
        """The same bundle, unverified, with variant ``self.name`` = ``entry`` read from the staging folder."""
        staged = Bundle(self.bundle.path, verify=False)
        staged.manifest = copy.deepcopy(self.bundle.manifest)
        here = self.dir.relative_to(self.bundle.path).as_posix()
        graphs = {g: {**d, "file": f"{here}/{Path(d['file']).name}"} for g, d in entry["graphs"].items()}
        staged.manifest["variants"][self.name] = {**entry, "graphs": graphs}
        staged.manifest["files"] = {**staged.manifest["files"], **file_entries(self.bundle.path, self.dir)}
        return staged


@contextlib.contextmanager
def adding_variant(bundle, name: str, *, force: bool, echo=print) -> Iterator[tuple[StagedVariant, dict]]:
    """The bundle transaction of `quantize`: yields (staged variant, entry dict to fill). On success the folder
    is renamed into place and the manifest names it in one rename, both under the bundle's lock (so no other
    writer reads the manifest in between or sweeps the folder as an orphan); the folder of a variant it
    replaces (``force``) is removed after. On any error or Ctrl-C the bundle is left as it was. ``bundle``: a
    `Bundle` the caller already verified, or its path."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    bundle_path = bundle.path
    if name in bundle.variants and not force:
        raise PixdeployError(f"bundle {bundle_path} already has variant {name}; pass --force to replace it")
    with locked_dir(bundle_path, echo):  # another quantize may be switching its folder in right now
        sweep_variants(bundle_path, echo)
    root = real_dir(bundle_path, VARIANTS_DIR)
    made_root = root is None
    if made_root:
        root = bundle_path / VARIANTS_DIR
        root.mkdir()
    final = root / f"{name}-{time.time_ns():x}"  # new each run: never half-replaced
    entry: dict = {}
    try:
        with contextlib.ExitStack() as switching, writing(final):  # a full disk names the variant's folder
            with staged_dir(final, what="pixdeploy variant", echo=echo) as tmp:
                mark_variant_folder(tmp, name)  # first: a kill from here on leaves a folder the sweep knows
                staged = StagedVariant(bundle, name, final, tmp)
                yield staged, entry
                switching.enter_context(locked_dir(bundle_path, echo))
            try:
                _switch_in(bundle_path, name, entry, final, force, echo)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
    except BaseException:
        if made_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # the bundle is left exactly as it was: no empty variants/ either
        raise


def _switch_in(bundle_path: Path, name: str, entry: dict, folder: Path, force: bool, echo) -> None:
    def add(manifest: dict) -> None:
        variants = manifest["variants"]
        old = variants.get(name)
        if old and not force:
            raise PixdeployError(f"another pixdeploy process added variant {name} to bundle {bundle_path} "
                                 "while this one ran; pass --force to replace it")
        variants[name] = entry
        files = manifest["files"]
        if old:  # --force: the replaced variant's files leave the checksum table with it
            old_dirs = {Path(g["file"]).parent.as_posix() for g in old.get("graphs", {}).values()}
            for f in [f for f in files if Path(f).parent.as_posix() in old_dirs]:
                files.pop(f)
        files.update(file_entries(bundle_path, folder))

    _rewrite(bundle_path, add, echo)
    sweep_variants(bundle_path, lambda *_: None)  # the replaced variant's folder


def add_engine_set(bundle_path, engine_set: EngineSet, folder: Path, echo=None) -> None:
    """Record an engine folder (already in place under engines/) and checksum its files, under the bundle's lock."""
    bundle_path = Path(bundle_path)

    def add(manifest: dict) -> None:
        prefix = f"{ENGINES_DIR}/{engine_set.name}/"
        files = manifest["files"]
        for f in [f for f in files if f.startswith(prefix)]:
            files.pop(f)
        files.update(file_entries(bundle_path, folder))
        manifest.setdefault("engines", {})[engine_set.name] = engine_set.to_dict()

    with locked_dir(bundle_path, echo):
        _rewrite(bundle_path, add, echo)


# ---- choosing an engine set ----

def _version(v: str) -> tuple:
    from pixdeploy.runtime.engine_header import version_tuple

    return version_tuple(v)


def select_engine_set(bundle: Bundle, variant: str = DEFAULT_VARIANT, *, tensorrt: str | None = None,
                      compute_capability: str | None = None, name: str | None = None,
                      allow_version_compatible: bool = False) -> EngineSet:
    """The one rule that picks an engine set (runtime, `triton`, `bench`, `inspect`):

    - the set of ``variant`` (and the folder ``name``, when given);
    - for this GPU's ``compute_capability`` and this ``tensorrt`` when given: built by that very TensorRT,
      or, with ``allow_version_compatible`` (the user's opt-in: such plans embed host code), a
      version-compatible set built by an older or equal TensorRT (the exact build is preferred);
    - exactly one: several candidates are refused with their names (pass ``name``), none with what exists
      and the `build-engine` command that makes one."""
    bundle.variant(variant)  # an unknown variant is named as such
    sets = [s for s in bundle.engine_sets() if s.variant == variant and (name is None or s.name == name)]
    if compute_capability is not None:
        sets = [s for s in sets if s.compute_capability == compute_capability]
    if tensorrt is not None:
        exact = [s for s in sets if s.tensorrt == tensorrt]
        compatible = [s for s in sets if s.version_compatible and _version(s.tensorrt) <= _version(tensorrt)]
        if exact:
            sets = exact
        elif compatible and allow_version_compatible:
            sets = sorted(compatible, key=lambda s: _version(s.tensorrt))[-1:]  # the newest that loads here
        elif compatible:
            raise BundleError(f"bundle {bundle.path}: engine set {compatible[-1].name} is version-compatible and "
                              "embeds host code; use it only if you trust its source (allow_host_code=True, "
                              "--allow-host-code)")
        else:
            sets = []
    if len(sets) == 1:
        return sets[0]
    want = (f"variant {variant}" + (f", TensorRT {tensorrt}" if tensorrt else "")
            + (f", compute capability {compute_capability}" if compute_capability else "")
            + (f", folder {printable(name)}" if name else ""))
    if sets:
        raise BundleError(f"bundle {bundle.path} has {len(sets)} engine sets for {want}: "
                          f"{printable(', '.join(s.name for s in sets))}; name one (--engines NAME)")
    built = [s.describe() for s in bundle.engine_sets()]
    raise BundleError(f"bundle {bundle.path} has no engines for {want}"
                      + (f" (it has: {'; '.join(built)})" if built else "")
                      + f"; build them with: pixdeploy build-engine {bundle.path} --variant {variant}")
