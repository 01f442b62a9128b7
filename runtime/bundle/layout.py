"""The bundle's layout: file and folder names, the format's constants, the one safe path join (inside the bundle,
no symlink on the way) and the strict JSON read every bundle file goes through."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pixdeploy.errors import PixdeployError
from pixdeploy.jsonfile import BadJson, load_json
from pixdeploy.text import printable

FORMAT = "pixdeploy-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_VARIANT = "fp32"  # what runs unless the user names another variant
GRAPHS = ("image_encoder", "decoder")
# How a variant's decoder graph is written, when not the plain form every backend runs (manifest: a variant's
# "decoder_form"): "fused-gqa-v1", onnxruntime's fused CPU operators (`pixdeploy.runtime.fused_decoder`).
DECODER_FORMS = ("fused-gqa-v1",)
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
EMBEDDINGS = "text_embeddings.npy"  # the word-embedding table, looked up in numpy
PARITY_REPORT = "parity.json"  # the exporter's full parity report; every variant's manifest entry holds its record
VARIANTS_DIR = "variants"
ENGINES_DIR = "engines"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; a larger one is not ours
VARIANT_FOLDER = re.compile(r"^(?P<variant>[a-z0-9][a-z0-9-]*)-(?P<id>[0-9a-f]{8,})$")  # what adding_variant names
# Written by adding_variant into every variant folder it makes, before anything else: the sweep removes a
# folder only when it holds this marker (a name alone says nothing: a user may name a folder anything).
VARIANT_MARKER = ".pixdeploy-variant"
MARKER_FORMAT = "pixdeploy-variant-folder"


class BundleError(PixdeployError):
    """A bundle is missing, damaged, or of a format this pixdeploy cannot read."""



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


def read_json(path: Path, what: str, root: Path) -> object:
    """A JSON file of a bundle, read by the one strict reader (`pixdeploy.jsonfile`); any fault is one line."""
    try:
        return load_json(path, MAX_MANIFEST_BYTES)
    except OSError as e:
        raise BundleError(f"damaged bundle {root}: {what} unreadable ({e.strerror or e})") from None
    except BadJson as e:  # not UTF-8, not JSON, NaN or Infinity, numbers past 64 bits, nested too deeply, too large
        raise BundleError(f"damaged bundle {root}: {what} unreadable ({printable(str(e)[:200])})") from None



# How an ONNX TensorProto names an external file: its external_data entry with key "location" (field 1 of
# StringStringEntryProto, length 8). A graph without these bytes keeps every tensor inside itself.
EXTERNAL_DATA_MARK = b"\x0a\x08location"


def external_tensors(proto):
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
