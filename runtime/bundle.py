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
from pathlib import Path

import numpy as np

from pixdeploy.config import ModelConfig
from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256
from pixdeploy.tokenizer import Tokenizer

FORMAT = "pixdeploy-bundle"
FORMAT_VERSION = 1
DEFAULT_VARIANT = "fp32"  # what runs unless the user names another variant


class BundleError(PixdeployError):
    """A bundle is missing, damaged, or of a format this pixdeploy cannot read."""


class Bundle:
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
            self.config = ModelConfig.from_dict(m["config"])
            self.tokenizer = Tokenizer.load(self.path / "tokenizer.json")
            self.graphs = m["graphs"]
        except (KeyError, TypeError, PixdeployError) as e:
            raise BundleError(f"damaged bundle {self.path}: {e}") from None

    def verify(self) -> None:
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise BundleError(f"damaged bundle {self.path}: manifest lists no files")
        for name, info in files.items():
            f = self.path / name
            if not f.is_file():
                raise BundleError(f"damaged bundle {self.path}: {name} is missing")
            if sha256(f) != info.get("sha256"):
                raise BundleError(f"damaged bundle {self.path}: {name} does not match its checksum")

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
        try:
            table = np.load(self.path / "text_embeddings.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy: {e}") from None
        if table.shape != (self.config.text_vocab, self.config.dim):
            raise BundleError(f"damaged bundle {self.path}: text embeddings have shape {table.shape}")
        return table
