"""The one reader of a bundle: `Bundle`, which verifies everything it hands out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from pixdeploy.runtime.bundle.layout import (
    DECODER_FORMS,
    DEFAULT_VARIANT,
    ENGINES_DIR,
    EXTERNAL_DATA_MARK,
    FORMAT,
    GRAPHS,
    READABLE_VERSIONS,
    BundleError,
    external_tensors,
    inside,
    read_json,
)
from pixdeploy.runtime.bundle.records import CachePair, EngineSet
from pixdeploy.runtime.bundle.upgrade import upgrade_v1

from pixdeploy.config import ModelConfig
from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256
from pixdeploy.text import printable
from pixdeploy.tokenizer import Tokenizer

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
        m = read_json(manifest, "manifest.json", self.path)
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
            for tensor in external_tensors(proto):
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
        parity = read_json(self.checked("parity.json"), "parity.json", self.path)
        try:
            checks = [(printable(str(c["name"])), c["value"]) for c in parity["checks"]]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for _, v in checks):
                raise ValueError("a check's value is not a finite number")
            return {"precision": printable(str(parity["precision"])), "passed": parity["passed"] is True,
                    "checks": [(n, float(v)) for n, v in checks]}
        except (KeyError, TypeError, ValueError, OverflowError):
            raise BundleError(f"damaged bundle {self.path}: parity.json is malformed") from None
