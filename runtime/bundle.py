"""Reading a bundle: the manifest is checked (format, version, checksums) before anything runs.

    bundle/
        manifest.json          format + version, producer, model config, special ids, graphs, checksums
        image_encoder.onnx     uint8 images + sizes -> window embeddings (pixdeploy:: custom ops inside)
        decoder.onnx           embeddings + positions + KV cache -> last logits + new cache
        text_embeddings.npy    the word-embedding table, looked up in numpy
        tokenizer.json
        parity.json            what the export measured against PyTorch
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

    def graph_path(self, graph: str) -> Path:
        return self.path / self.graphs[graph]["file"]

    def text_embeddings(self) -> np.ndarray:
        try:
            table = np.load(self.path / "text_embeddings.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"damaged bundle {self.path}: text_embeddings.npy: {e}") from None
        if table.shape != (self.config.text_vocab, self.config.dim):
            raise BundleError(f"damaged bundle {self.path}: text embeddings have shape {table.shape}")
        return table
