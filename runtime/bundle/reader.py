"""The one reader of a bundle: `Bundle`, which verifies what it hands out and hands it out as typed records."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from pixdeploy.runtime.bundle.layout import (
    DECODER_FORMS,
    DEFAULT_VARIANT,
    EMBEDDINGS,
    ENGINES_DIR,
    EXTERNAL_DATA_MARK,
    FORMAT,
    GRAPHS,
    MANIFEST,
    PARITY_REPORT,
    READABLE_VERSIONS,
    TOKENIZER,
    BundleError,
    external_tensors,
    inside,
    read_json,
)
from pixdeploy.runtime.bundle.records import (
    CachePair,
    CpuSchemeRecord,
    EngineSet,
    FileEntry,
    GraphSignature,
    ParityRecord,
    RecordError,
    SourceRecord,
    VariantRecord,
)
from pixdeploy.runtime.bundle.signatures import check_cache_pairs, read_signatures
from pixdeploy.runtime.bundle.upgrade import upgrade_v1

from pixdeploy.config import ModelConfig
from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256
from pixdeploy.text import printable
from pixdeploy.tokenizer import Tokenizer


class Bundle:
    """A bundle on disk. Constructing one runs `verify`: the one verification every reader uses
    (`Pipeline.load`, `inspect`, export's own check), so a bundle one command refuses no other accepts.
    A variant's graphs are hashed when first used, so a command hashes only the variant it runs."""

    def __init__(self, path, verify: bool = True):
        path = Path(path)
        manifest = inside(path, MANIFEST)
        if not manifest.is_file():
            kind = "not a folder" if path.exists() and not path.is_dir() else f"{MANIFEST} missing"
            raise BundleError(f"no bundle at {path} ({kind})")
        self._load(path, read_json(manifest, MANIFEST, path), verify)

    @classmethod
    def from_manifest(cls, path, manifest: dict, *, verify: bool = True, hashed: dict | None = None) -> Bundle:
        """The bundle in ``path`` as ``manifest`` (in memory, not yet written) describes it: what an exporter or
        a quantizer gates before it commits. ``hashed``: name -> sha256 of files the caller has just hashed
        itself, taken as checked when the manifest records the same digest."""
        bundle = cls.__new__(cls)
        bundle._load(Path(path), manifest, verify=False)
        for name, digest in (hashed or {}).items():
            entry = bundle.files.get(name)
            if isinstance(entry, dict) and entry.get("sha256") == digest:
                bundle._checked.add(name)
        if verify:
            bundle.verify()
        return bundle

    def _load(self, path: Path, m, verify: bool) -> None:
        self.path = path
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BundleError(f"{self.path} is not a pixdeploy bundle")
        version = m.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise BundleError(f"bundle {self.path} has format version {printable(repr(version))}; this pixdeploy "
                              f"reads versions {', '.join(map(str, READABLE_VERSIONS))} (re-export it with "
                              "`pixdeploy export CHECKPOINT -o BUNDLE`)")
        self.manifest = upgrade_v1(m) if version == 1 else m
        self.format_version = version
        self._checked: set = set()  # file names hashed, and ("external", graph) checked for external data
        self._embeddings = self._tokenizer = self._variants = None
        try:
            self.config = ModelConfig.from_dict(self._field("config", dict))
        except (KeyError, TypeError, ValueError, PixdeployError) as e:
            raise BundleError(f"damaged bundle {self.path}: config: {printable(str(e))}") from None
        self.graphs = self._field("graphs", dict)  # graph -> signature, the manifest form (what runners check)
        self._signatures = None
        if verify:
            self.verify()

    @property
    def signatures(self) -> dict[str, GraphSignature]:
        """graph -> its signature, checked against the config (`signatures.read_signatures`)."""
        if self._signatures is None:
            self._signatures = read_signatures(self.path, self.graphs, self.config)
        return self._signatures

    def _field(self, name: str, kind: type):
        value = self.manifest.get(name)
        if not isinstance(value, kind) or not value:
            raise BundleError(f"damaged bundle {self.path}: {MANIFEST} has no {name!r} field"
                              + ("" if value is None else f" of the right kind (found {type(value).__name__})"))
        return value

    def _record(self, read, value, what: str):
        """``read(value)``, a strict record parser, with its refusal as one line naming the bundle."""
        try:
            return read(value)
        except RecordError as e:
            raise BundleError(f"damaged bundle {self.path}: {what}: {printable(str(e))}") from None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            try:
                self._tokenizer = Tokenizer.load(self.checked(TOKENIZER))
            except (KeyError, TypeError, ValueError, PixdeployError) as e:
                raise BundleError(f"damaged bundle {self.path}: {TOKENIZER}: {printable(str(e))}") from None
        return self._tokenizer

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
            raise BundleError(f"damaged bundle {self.path}: {MANIFEST} export_profile is malformed")
        return name

    @property
    def source_checkpoint(self) -> str | None:
        """The checkpoint the bundle was exported from (a path on the machine that exported it). A relative path
        is relative to the bundle's folder, never to the current folder: a command run from elsewhere finds the
        same checkpoint, not a same-named one where it runs."""
        try:
            checkpoint = SourceRecord.from_dict(self.manifest.get("source")).checkpoint
        except RecordError:
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

    def hashed_files(self) -> dict[str, str]:
        """name -> sha256 of every file this Bundle has checked so far (for `from_manifest`)."""
        return {n: self.files[n]["sha256"] for n in self._checked if isinstance(n, str)}

    def verify(self) -> None:
        """Everything a bundle must be before anything runs: manifest fields present and of their records' shapes,
        every listed file inside the bundle, the shared files (tokenizer, tables, reports) matching their
        checksums, every variant's graphs among the listed files (hashed when the variant is first used:
        `graph_path`), the decoder's cache pairs among its inputs and outputs, the graphs' signatures those the
        config implies, a tokenizer that loads and an embeddings table of the configured shape. Engine plans are
        checked when a set is selected, as they can be large. Raises one BundleError naming what is wrong."""
        for name, entry in self.files.items():
            inside(self.path, name)  # every path refused before any is opened
            self._record(FileEntry.from_dict, entry, f"{MANIFEST} files")
        for name in (TOKENIZER, EMBEDDINGS):
            if name not in self.files:
                raise BundleError(f"damaged bundle {self.path}: manifest lists no {name}")
        self.signatures  # noqa: B018 -- reads and checks them
        graph_files, variant_folders = set(), set()  # a variant's files are hashed with the variant
        for name, variant in self.variants.items():
            for graph in GRAPHS:
                if graph not in variant.graphs:
                    raise BundleError(f"damaged bundle {self.path}: variant {printable(name)} lists no graph {graph!r}")
                self._listed(variant.graphs[graph], f"variant {printable(name)} graph {graph}")
                graph_files.add(variant.graphs[graph])
                variant_folders.add(Path(variant.graphs[graph]).parent.as_posix())
            self.decoder_form(name)
        variant_folders.discard(".")  # the bundle's own folder holds the fp32 graphs and the shared files
        for name in self.files:
            if not name.startswith(f"{ENGINES_DIR}/") and name not in graph_files \
                    and Path(name).parent.as_posix() not in variant_folders:
                self.checked(name)
        self.tokenizer  # noqa: B018 -- loads and checks it
        self.cache_pairs()
        self.engine_sets()
        self._embeddings = self.text_embeddings()  # read once: Pipeline takes the verified table

    def _listed(self, name: str, what: str) -> Path:
        path = inside(self.path, name)
        if not isinstance(self.files.get(name), dict):
            raise BundleError(f"damaged bundle {self.path}: {what} is {printable(str(name))}, which is not among "
                              "the checksummed files")
        return path

    # -- variants --

    @property
    def variants(self) -> dict[str, VariantRecord]:
        """Every variant, fp32 first."""
        if self._variants is None:
            listed = self._field("variants", dict)
            if not isinstance(listed.get(DEFAULT_VARIANT), dict):
                raise BundleError(f"damaged bundle {self.path}: {MANIFEST} lists no fp32 variant")
            order = [DEFAULT_VARIANT] + [k for k in listed if k != DEFAULT_VARIANT]
            self._variants = {k: self._record(lambda v, k=k: VariantRecord.from_dict(v, f"variant {k}"), listed[k],
                                              f"variant {printable(repr(k))} is malformed") for k in order}
        return self._variants

    def variant(self, name: str = DEFAULT_VARIANT) -> VariantRecord:
        variants = self.variants
        if name not in variants:
            raise BundleError(f"bundle {self.path} has no variant {printable(repr(name))}; it has: "
                              f"{printable(', '.join(variants))}")
        return variants[name]

    def graph_path(self, graph: str, variant: str = DEFAULT_VARIANT) -> Path:
        """The file of ``graph`` (image_encoder, decoder) in ``variant``, checksummed: the one place that
        knows the layout."""
        file = self.variant(variant).graphs.get(graph)
        if file is None:
            raise BundleError(f"damaged bundle {self.path}: variant {printable(variant)} lists no graph {graph!r}")
        path = self.checked(file)
        self._check_external_data(file, path)
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
            for tensor in external_tensors(proto):
                location = dict((e.key, e.value) for e in tensor.external_data).get("location", "")
                if not location or Path(location).is_absolute() or ".." in Path(location).parts:
                    raise BundleError(f"damaged bundle {self.path}: {printable(name)} keeps "
                                      f"{printable(tensor.name)} in {printable(location)}, a path outside the bundle")
                self.checked((folder / location).as_posix() if str(folder) != "." else location)
        self._checked.add(("external", name))

    def decoder_form(self, name: str = DEFAULT_VARIANT) -> str | None:
        """The form of ``name``'s decoder graph: None for the plain form, else one of `DECODER_FORMS`."""
        form = self.variant(name).decoder_form
        if form is not None and form not in DECODER_FORMS:
            raise BundleError(f"damaged bundle {self.path}: variant {printable(name)} records decoder form "
                              f"{printable(repr(form))}; this pixdeploy knows {', '.join(DECODER_FORMS)}")
        return form

    def cpu_scheme(self, name: str = DEFAULT_VARIANT) -> CpuSchemeRecord | None:
        """What `quantize --target cpu` measured and chose for ``name``; None for a variant without one."""
        return self.variant(name).cpu_scheme

    def parity(self, name: str = DEFAULT_VARIANT) -> ParityRecord | None:
        """What ``name``'s parity gate measured: every variant's record has one shape. A bundle exported before
        the fp32 record held its checks has them from the exporter's report."""
        record = self.variant(name).parity
        if name == DEFAULT_VARIANT and record is not None and not record.checks:
            report = self.parity_report()
            if report is not None:
                return ParityRecord(record.precision or report.precision, record.passed, report.checks)
        return record

    def parity_report(self) -> ParityRecord | None:
        """The exporter's parity report (parity.json: thresholds and statistics too) as a record; None if absent."""
        if PARITY_REPORT not in self.files:
            return None
        report = read_json(self.checked(PARITY_REPORT), PARITY_REPORT, self.path)
        try:
            checks = {c["name"]: c["value"] for c in report["checks"]}
            return ParityRecord.from_dict({"precision": report["precision"], "passed": report["passed"],
                                           "checks": checks})
        except (KeyError, TypeError, RecordError):
            raise BundleError(f"damaged bundle {self.path}: {PARITY_REPORT} is malformed") from None

    # -- the decoder's KV cache --

    def cache_pairs(self) -> list[CachePair]:
        """The decoder's cache tensors as recorded at export: (past input, present output, dtype, shape)."""
        return check_cache_pairs(self.path, self.signatures["decoder"])

    # -- engine sets --

    def engine_sets(self) -> list[EngineSet]:
        """Every engine set the manifest records, parsed; each file it names is checked to lie inside the bundle
        and among the checksummed files (hashed when the set is used)."""
        raw = self.manifest.get("engines") or {}
        if not isinstance(raw, dict):
            raise BundleError(f"damaged bundle {self.path}: {MANIFEST} engines is malformed")
        sets = []
        for name, r in raw.items():
            s = self._record(lambda r, name=name: EngineSet.from_dict(name, r), r,
                             f"engine set {printable(repr(name))} is malformed")
            for f in s.files.values():
                inside(self.path, f)
                if not f.startswith(f"{ENGINES_DIR}/{name}/") or f not in self.files:
                    raise BundleError(f"damaged bundle {self.path}: engine set {printable(name)} names "
                                      f"{printable(f)}, which is not a checksummed file of its folder")
            sets.append(s)
        return sets

    def engine_headers(self, engine_set: EngineSet) -> dict[str, dict]:
        """graph -> header of each engine of a set, checked against this bundle (`engine_check.engine_headers`)."""
        from pixdeploy.runtime.bundle.engine_check import engine_headers

        return engine_headers(self, engine_set)

    def engine_files(self, engine_set: EngineSet) -> dict[str, Path]:
        """graph -> engine file of a set, each checksummed."""
        from pixdeploy.runtime.bundle.engine_check import engine_files

        return engine_files(self, engine_set)

    # -- tables --

    def text_embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            from pixdeploy.runtime.bundle.tables import read_embeddings

            self._embeddings = read_embeddings(self.checked(EMBEDDINGS), (self.config.text_vocab, self.config.dim),
                                               self.path)
        return self._embeddings
