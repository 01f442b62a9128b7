"""Reading a bundle: the manifest is checked (format, version, checksums) before anything runs.

    bundle/
        manifest.json          format + version, producer, model config, special ids, graphs, checksums
        image_encoder.onnx     uint8 images + sizes -> window embeddings (pixdeploy:: custom ops inside)
        decoder.onnx           embeddings + positions + KV cache -> last logits + new cache
        text_embeddings.npy    the word-embedding table, looked up in numpy
        tokenizer.json
        parity.json            what the export measured against PyTorch
        variants/NAME/         more precisions of the same graphs (fp16, int8-tensorrt, int8-cpu), each
                               listed in the manifest with its precision, target and parity result

Variants: the manifest's ``variants`` maps a name to its precision, target, graphs and parity record;
every file's checksum stays in the one ``files`` table. A bundle written before variants existed has only
the top-level ``graphs``: they are its ``fp32`` variant. ``Bundle.graph_path(graph, variant)`` is the one
place that answers "which file is graph X of variant V".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pixdeploy.config import ModelConfig
from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256, staged_file
from pixdeploy.tokenizer import Tokenizer

FORMAT = "pixdeploy-bundle"
FORMAT_VERSION = 1
DEFAULT_VARIANT = "fp32"  # what runs unless the user names another variant


class BundleError(PixdeployError):
    """A bundle is missing, damaged, or of a format this pixdeploy cannot read."""


class Bundle:
    """A bundle on disk. Constructing one runs `verify`: the one verification every reader uses
    (`Pipeline.load`, `inspect`, export's own check), so a bundle one command refuses no other accepts."""

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise BundleError(f"no bundle at {self.path} (manifest.json missing)")
        try:
            self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"damaged bundle {self.path}: manifest.json unreadable ({e})") from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BundleError(f"{self.path} is not a pixdeploy bundle")
        if m.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"bundle {self.path} has format version {m.get('format_version')}; "
                              f"this pixdeploy reads version {FORMAT_VERSION} (re-export it)")
        if verify:
            self.verify()
        try:
            self.config = ModelConfig.from_dict(self._field("config", dict))
            self.tokenizer = Tokenizer.load(self.path / "tokenizer.json")
            self.graphs = self._field("graphs", dict)
        except (KeyError, TypeError, ValueError, PixdeployError) as e:
            raise BundleError(f"damaged bundle {self.path}: {e}") from None

    def _field(self, name: str, kind: type):
        value = self.manifest.get(name)
        if not isinstance(value, kind) or not value:
            raise BundleError(f"damaged bundle {self.path}: manifest.json has no {name!r} field"
                              + ("" if value is None else f" of the right kind (found {type(value).__name__})"))
        return value

    def verify(self) -> None:
        """Everything a bundle must be before anything runs: manifest fields present, every file listed
        with a plain name and its checksum, every graph among the listed files, a tokenizer that loads
        and an embeddings table of the configured shape. Raises one BundleError naming what is wrong."""
        files = self._field("files", dict)
        for name, info in files.items():
            norm = os.path.normpath(name) if isinstance(name, str) and name else ".."
            if os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
                # a manifest must not make a reader open files outside the bundle
                raise BundleError(f"damaged bundle {self.path}: manifest lists {name!r}, a path outside the bundle")
            f = self.path / name
            if not f.is_file():
                raise BundleError(f"damaged bundle {self.path}: {name} is missing")
            if not isinstance(info, dict) or sha256(f) != info.get("sha256"):
                raise BundleError(f"damaged bundle {self.path}: {name} does not match its checksum")
        graphs = self._field("graphs", dict)
        for graph in ("image_encoder", "decoder"):
            entry = graphs.get(graph)
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise BundleError(f"damaged bundle {self.path}: manifest.json has no {graph!r} graph entry")
            if entry["file"] not in files:  # only checksummed files are ever loaded
                raise BundleError(f"damaged bundle {self.path}: graph file {entry['file']!r} is not among "
                                  "the checksummed files")
        for name in ("tokenizer.json", "text_embeddings.npy"):
            if name not in files:
                raise BundleError(f"damaged bundle {self.path}: manifest lists no {name}")
        try:
            self.config = ModelConfig.from_dict(self._field("config", dict))
            self.tokenizer = Tokenizer.load(self.path / "tokenizer.json")
        except (KeyError, TypeError, ValueError, PixdeployError) as e:
            raise BundleError(f"damaged bundle {self.path}: {e}") from None
        self._embeddings = self.text_embeddings()  # read once: Pipeline takes the verified table

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def variants(self) -> dict[str, dict]:
        """Every variant: name -> {precision, target, graphs, parity}; fp32 first."""
        listed = self.manifest.get("variants")
        fp32 = {"precision": "fp32", "target": "any", "graphs": self.graphs, "parity": self.manifest.get("parity")}
        out = {DEFAULT_VARIANT: fp32}
        if isinstance(listed, dict):  # absent in bundles written before variants existed
            out.update((k, v) for k, v in listed.items() if k != DEFAULT_VARIANT and isinstance(v, dict))
        return out

    def variant(self, name: str = DEFAULT_VARIANT) -> dict:
        variants = self.variants
        if name not in variants:
            raise BundleError(f"bundle {self.path} has no variant {name!r}; it has: {', '.join(variants)}")
        return variants[name]

    def graph_path(self, graph: str, variant: str = DEFAULT_VARIANT) -> Path:
        """The file of ``graph`` (image_encoder, decoder) in ``variant``: the one place that knows the layout."""
        graphs = self.variant(variant).get("graphs")
        try:
            name = Path(graphs[graph]["file"])
        except (KeyError, TypeError):
            raise BundleError(f"damaged bundle {self.path}: variant {variant!r} lists no graph {graph!r}") from None
        if name.is_absolute() or ".." in name.parts:  # a bundle is untrusted: never read outside it
            raise BundleError(f"damaged bundle {self.path}: graph file {name} lies outside the bundle")
        return self.path / name

    def text_embeddings(self) -> np.ndarray:
        if getattr(self, "_embeddings", None) is not None:
            return self._embeddings
        try:
            table = np.load(self.path / "text_embeddings.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy: {e}") from None
        if not isinstance(table, np.ndarray) or table.dtype != np.float32:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy is not a float32 array")
        if table.shape != (self.config.text_vocab, self.config.dim):
            raise BundleError(f"damaged bundle {self.path}: text embeddings have shape {table.shape}, "
                              f"expected {(self.config.text_vocab, self.config.dim)}")
        return table


def rewrite_manifest(path, change: Callable[[dict], None], echo=None) -> None:
    """Read a bundle's manifest afresh, let ``change`` edit it in place, write it back in one rename.
    Callers hold `pixdeploy.files.locked_dir` on the bundle, so a change another writer made since they
    first read it is kept, not overwritten."""
    manifest = Bundle(path, verify=False).manifest
    change(manifest)
    with staged_file(Path(path) / "manifest.json", echo=echo) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
