"""Hostile inputs through every command: one clear line, the right exit code, no traceback, nothing
written and nothing lost.

The module makes its own odd files (every Pillow mode, truncated and zero-byte images, a decompression
bomb header, symlink loops, non-UTF-8 text, image paths that leave the image root, damaged manifests
and graphs whose checksums were recomputed to match, NaN/inf options) and runs each through each
command that takes that kind of input, in-process through click's CliRunner.

It is table-driven:
- ``COMMANDS`` says, for each command, how it is invoked when the input under test stands in one *role*
  (``image``, ``bundle``, ``checkpoint``, ``data``, ``out_dir``, ``out_file``, ``float``): a function of the
  hostile value and the known-good inputs (``good``) returning the argv.
- ``INPUTS`` lists the hostile inputs of each role: a maker writing it under the case's folder, the
  message expected (a regex) and the exit code.

Every (command, input) pair whose roles match is one test case. A new command joins by adding one row
to ``COMMANDS`` (e.g. ``"quantize": {"bundle": lambda v, good: ["quantize", v, ...]}``); a new kind of
bad input joins by adding a row to ``INPUTS``. Inputs that must *work* (every Pillow mode) are in
``READABLE_IMAGES``. What needs a real process (kill -9) is at the end of the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pixdeploy.cli import main

# ---- the known-good inputs each command needs besides the one under test ------------------------------


@dataclass(frozen=True)
class Good:
    bundle: Path
    checkpoint: Path
    image: Path
    data: Path  # a small mixed text file with images
    root: Path  # a scratch folder of the good inputs (never written by a case)


@pytest.fixture(scope="module")
def good(tiny_bundle, tiny_checkpoint, tmp_path_factory) -> Good:
    from sklearn.datasets import load_sample_images

    from pixdeploy.demo_data import make_demo_set

    root = tmp_path_factory.mktemp("good")
    image = root / "photo.jpg"
    Image.fromarray(load_sample_images().images[0]).resize((64, 48)).save(image)  # a real photo
    train_txt, _ = make_demo_set(root / "demo", n_train=8, n_eval=2, image_size=32, max_number=9)
    return Good(tiny_bundle, tiny_checkpoint, image, train_txt, root)


QUICK_TRAIN = ["--steps", "1", "--batch-size", "2", "--workers", "0", "--warmup", "1", "--vocab-size", "32"]

# ---- commands: role -> argv -----------------------------------------------------------------------------

COMMANDS: dict[str, dict] = {
    "generate": {
        "image": lambda v, g: ["generate", g.bundle, v],
        "bundle": lambda v, g: ["generate", v, g.image],
        "float": lambda v, g: ["generate", g.bundle, g.image, "--temperature", v],
    },
    "generate --top-p": {
        "float": lambda v, g: ["generate", g.bundle, g.image, "--top-p", v],
    },
    "generate --backend openvino": {
        "bundle": lambda v, g: ["generate", v, g.image, "--backend", "openvino"],
    },
    "generate --stream": {
        "image": lambda v, g: ["generate", g.bundle, v, "--stream"],
    },
    "embed": {
        "image": lambda v, g: ["embed", g.bundle, v, "-o", v.parent / "vectors.npy"],
        "bundle": lambda v, g: ["embed", v, g.image, "-o", v.parent / "vectors.npy"],
        "out_file": lambda v, g: ["embed", g.bundle, g.image, "-o", v],
    },
    "inspect": {
        "bundle": lambda v, g: ["inspect", v],
    },
    "parity": {
        "bundle": lambda v, g: ["parity", v, "--checkpoint", g.checkpoint, "--images", g.image],
        "checkpoint": lambda v, g: ["parity", g.bundle, "--checkpoint", v, "--images", g.image],
        "image": lambda v, g: ["parity", g.bundle, "--checkpoint", g.checkpoint, "--images", v],
    },
    "export": {
        "checkpoint": lambda v, g: ["export", v, "-o", v.parent / "bundle"],
        "image": lambda v, g: ["export", g.checkpoint, "-o", v.parent / "bundle", "--images", v],
        "out_dir": lambda v, g: ["export", g.checkpoint, "-o", v, "--force"],
    },
    "demo": {
        "out_dir": lambda v, g: ["demo", "--workdir", v, "--force"],
    },
    "train": {
        "data": lambda v, g: ["train", "--data", v, "--out", v.parent / "run", *QUICK_TRAIN],
        "out_dir": lambda v, g: ["train", "--data", g.data, "--out", v, *QUICK_TRAIN],
        "float": lambda v, g: ["train", "--data", g.data, "--out", g.root / "never", "--lr", v, *QUICK_TRAIN],
    },
    "quantize": {
        "bundle": lambda v, g: ["quantize", v, "--precision", "int8", "--target", "cpu", "--checkpoint", g.checkpoint],
        "checkpoint": lambda v, g: ["quantize", g.bundle, "--precision", "int8", "--target", "cpu",
                                    "--checkpoint", v],
    },
    "build-engine": {
        "bundle": lambda v, g: ["build-engine", v],
        "int": lambda v, g: ["build-engine", g.bundle, "--max-batch", v],
    },
    "build-engine --check": {
        "bundle": lambda v, g: ["build-engine", v, "--check"],
    },
    "bench": {
        "bundle": lambda v, g: ["bench", v, "--stage", "encoder", "--batch", "1", "--iters", "5", "--warmup", "1"],
        "int": lambda v, g: ["bench", g.bundle, "--stage", "encoder", "--batch", v],
    },
    "triton": {
        "bundle": lambda v, g: ["triton", v, "-o", v.parent / "repo", "--backend", "python"],
        "out_dir": lambda v, g: ["triton", g.bundle, "-o", v, "--backend", "python", "--force"],
        "int": lambda v, g: ["triton", g.bundle, "-o", g.root / "never", "--max-batch", v],
    },
    "triton --instances": {
        "int": lambda v, g: ["triton", g.bundle, "-o", g.root / "never", "--instances", v],
    },
    "generate --seed": {
        "int": lambda v, g: ["generate", g.bundle, g.image, "--seed", v],
    },
    "generate --max-new-tokens": {
        "int": lambda v, g: ["generate", g.bundle, g.image, "--max-new-tokens", v],
    },
    "train --word-loss-weight": {
        "float": lambda v, g: ["train", "--data", g.data, "--out", g.root / "never", "--word-loss-weight", v,
                               *QUICK_TRAIN],
    },
}

# ---- hostile inputs: role -> [(name, make(case_dir, good) -> value, message regex, exit code)] ----------


def png_bytes(size=(20, 10), mode="RGB") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def symlink(path: Path, target: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


def bomb_header(path: Path) -> Path:
    """A valid PNG header declaring 100000 x 100000 pixels (no pixel data worth the name)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                 + chunk(b"IEND", b""))


def damaged_bundle(damage, recompute: bool = True):
    """A copy of the good bundle, damaged, its checksums recomputed so only the damage itself shows."""

    def make(case: Path, g: Good) -> Path:
        from pixdeploy.export.bundle import write_manifest

        from pixdeploy.config import ModelConfig

        b = case / "bundle"
        shutil.copytree(g.bundle, b)
        manifest = json.loads((b / "manifest.json").read_text())
        damage(b)
        if recompute:
            cfg = ModelConfig.from_dict(manifest["config"])
            extra = {"source": manifest["source"], "parity": manifest["variants"]["fp32"]["parity"]}
            write_manifest(b, cfg, extra)
        return b

    return make


def edit_manifest(edit):
    def damage(b: Path):
        m = json.loads((b / "manifest.json").read_text())
        edit(m)
        (b / "manifest.json").write_text(json.dumps(m))

    return damage_only(damage)


def damage_only(damage):
    def make(case: Path, g: Good) -> Path:
        b = case / "bundle"
        shutil.copytree(g.bundle, b)
        damage(b)
        return b

    return make


def truncate(name: str, keep: int):
    def damage(b: Path):
        p = b / name
        p.write_bytes(p.read_bytes()[:keep])

    return damage


def object_array_embeddings(b: Path):
    np.save(b / "text_embeddings.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def swap_cache_presents(m: dict) -> None:
    """Layer 0's key cache fed from layer 1's and back: names all valid, answers not."""
    cache = m["graphs"]["decoder"]["cache"]
    cache[0]["present"], cache[2]["present"] = cache[2]["present"], cache[0]["present"]


def huge_embeddings_header(b: Path) -> None:
    """A .npy header declaring 5e6 x 5e6 float32 (91 TiB) over 64 bytes of data."""
    with open(b / "text_embeddings.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (5_000_000, 5_000_000)})
        f.write(b"\0" * 64)


def wrong_shape_embeddings(b: Path):
    np.save(b / "text_embeddings.npy", np.zeros((3, 5), np.float32))


def damaged_checkpoint(damage):
    def make(case: Path, g: Good) -> Path:
        run = case / "run"
        shutil.copytree(g.checkpoint, run)
        damage(run / "checkpoint")
        return run / "checkpoint"

    return make


def recompute_checkpoint_sums(ck: Path):
    from pixdeploy.files import sha256

    meta = json.loads((ck / "meta.json").read_text())
    meta["files"] = {name: sha256(ck / name) for name in meta["files"]}
    (ck / "meta.json").write_text(json.dumps(meta))


def truncated_weights_matching_sum(ck: Path):
    p = ck / "model.safetensors"
    p.write_bytes(p.read_bytes()[:200])
    recompute_checkpoint_sums(ck)


def edit_meta(edit):
    def damage(ck: Path):
        meta = json.loads((ck / "meta.json").read_text())
        edit(meta)
        (ck / "meta.json").write_text(json.dumps(meta))

    return damage


def user_folder(case: Path, g: Good) -> Path:
    d = case / "notes"
    write(d / "todo.md", "my notes\n")
    write(d / "cat.png", png_bytes())
    return d


def run_without_meta(case: Path, g: Good) -> Path:
    """A previous run whose checkpoint lost its meta.json: its weights and metrics must survive."""
    run = case / "run"
    shutil.copytree(g.checkpoint, run)
    (run / "checkpoint" / "meta.json").unlink()
    write(run / "metrics.jsonl", json.dumps({"step": 1500, "loss": 1.0}) + "\n")
    return run


def mixed_file(lines: list[str], images: dict[str, bytes] | None = None):
    def make(case: Path, g: Good) -> Path:
        for name, data in (images or {}).items():
            write(case / "data" / name, data)
        return write(case / "data" / "mixed.txt", "\n".join(lines) + "\n")

    return make


def images_and_readme_plus_mixed(case: Path, g: Good) -> Path:
    d = case / "data"
    for i in range(3):
        write(d / f"img{i}.png", png_bytes())
    write(d / "captions.txt", "a cat <|image|>img0.png<|/image|>\n")
    return d


OUTSIDE = r"leaves the image root .*\(pass --allow-outside-image-root"
IMAGE_INPUTS = [
    ("missing", lambda c, g: c / "nope.png", r"image not found: .*nope\.png", 1),
    ("zero-byte", lambda c, g: write(c / "empty.png", b""), r"image file is empty: .*empty\.png", 1),
    ("truncated png", lambda c, g: write(c / "cut.png", png_bytes((64, 64))[:60]), r"cannot read image .*cut\.png", 1),
    ("text named .png", lambda c, g: write(c / "text.png", "hello"), r"cannot read image .*text\.png", 1),
    ("bomb header", lambda c, g: bomb_header(c / "bomb.png"), r"image too large: .*bomb\.png .*decompression bomb", 1),
    ("symlink loop", lambda c, g: symlink(c / "loop.png", "loop.png"),
     r"loop\.png is a broken symlink or a symlink loop", 1),
    ("dangling symlink", lambda c, g: symlink(c / "gone.png", "missing-target.png"),
     r"gone\.png is a broken symlink", 1),
    ("folder of none", lambda c, g: (c / "empty").mkdir() or c / "empty", r"no images given", 1),
    ("non-UTF-8 name", lambda c, g: write(c / "caf\udce9.png", b"\xff\xd8broken"), r"cannot read image", 1),
]
BUNDLE_INPUTS = [
    ("missing", lambda c, g: c / "nope", r"no bundle at .*nope \(manifest\.json missing\)", 1),
    ("a file", lambda c, g: write(c / "file", "x"), r"no bundle at .*file", 1),
    ("empty folder", lambda c, g: (c / "empty").mkdir() or c / "empty", r"no bundle at .*empty", 1),
    ("manifest not json", damage_only(lambda b: write(b / "manifest.json", "{")), r"manifest\.json unreadable", 1),
    ("manifest a list", damage_only(lambda b: write(b / "manifest.json", "[]")), r"is not a pixdeploy bundle", 1),
    ("manifest non-UTF-8", damage_only(lambda b: write(b / "manifest.json", b"\xff\xfe{")),
     r"manifest\.json unreadable", 1),
    ("format version 99", edit_manifest(lambda m: m.update(format_version=99)), r"format version 99", 1),
    ("no config field", edit_manifest(lambda m: m.pop("config")), r"manifest\.json has no 'config' field", 1),
    ("no graphs field", edit_manifest(lambda m: m.pop("graphs")), r"manifest\.json has no 'graphs' field", 1),
    ("no files field", edit_manifest(lambda m: m.pop("files")), r"manifest\.json has no 'files' field", 1),
    ("config a string", edit_manifest(lambda m: m.update(config="tiny")), r"no 'config' field of the right kind", 1),
    ("file outside", edit_manifest(lambda m: m["files"].update({"../x": {"sha256": "0"}})),
     r"names \.\./x, a path outside the bundle", 1),
    ("graph unlisted", edit_manifest(lambda m: m["variants"]["fp32"]["graphs"]["decoder"].update(file="other.onnx")),
     r"not among the checksummed", 1),
    ("config nan", edit_manifest(lambda m: m["config"].update(norm_eps=float("nan"))),
     r"holds NaN, which is not a JSON number", 1),  # refused as it is read (a NaN in a config field: test_config)
    ("decoder truncated", damage_only(truncate("decoder.onnx", 1000)), r"decoder\.onnx does not match its checksum", 1),
    ("tokenizer missing", damage_only(lambda b: (b / "tokenizer.json").unlink()), r"tokenizer\.json is missing", 1),
    ("encoder truncated, sums match", damaged_bundle(truncate("image_encoder.onnx", 5000)),
     r"cannot load .*image_encoder\.onnx", 1),
    ("pickled embeddings, sums match", damaged_bundle(object_array_embeddings), r"text_embeddings\.npy: .*pickle", 1),
    ("embeddings wrong shape, sums match", damaged_bundle(wrong_shape_embeddings),
     r"text embeddings have shape \(3, 5\)", 1),
    ("tokenizer garbage, sums match", damaged_bundle(lambda b: write(b / "tokenizer.json", "{}")),
     r"invalid tokenizer file", 1),
    ("tokenizer non-UTF-8, sums match", damaged_bundle(lambda b: write(b / "tokenizer.json", b"\xff")),
     r"damaged bundle", 1),
    ("parity.json garbage, sums match", damaged_bundle(lambda b: write(b / "parity.json", "[1]")), None, None),
    ("cache pairs swapped", edit_manifest(swap_cache_presents),
     r"KV-cache pairs .* do not pair its cache inputs with its cache outputs in the graph's order", 1),
    ("cache pair of another shape",
     edit_manifest(lambda m: m["graphs"]["decoder"]["cache"][0].update(shape=["batch", 1])),
     r"KV-cache pair past_k_0 -> present_k_0 records .*not the dtype and shape of both tensors it joins", 1),
    ("input shape 10**15",
     edit_manifest(lambda m: m["graphs"]["decoder"]["inputs"]["past_k_0"]["shape"].__setitem__(2, 10**15)),
     r"graph decoder's input 'past_k_0' has shape .*1000000000000000.*not dims of at most \d+ \(the config's "
     r"largest", 1),
    ("unknown dtype", edit_manifest(lambda m: m["graphs"]["decoder"]["inputs"]["past_k_0"].update(dtype="float128")),
     r"graph decoder's input 'past_k_0' has dtype 'float128', not one of float32", 1),
    ("embeddings header of 91 TiB, sums match", damaged_bundle(huge_embeddings_header),
     r"text embeddings have shape \(5000000, 5000000\) \(float32, 64 bytes of data\), expected", 1),
]
def meta_symlinked_outside(case: Path, g: Good) -> Path:
    """meta.json a symlink to a valid meta.json outside the checkpoint: followed, it would be parsed and the
    checkpoint used."""
    run = case / "run"
    shutil.copytree(g.checkpoint, run)
    ck = run / "checkpoint"
    elsewhere = write(case / "elsewhere" / "meta.json", (ck / "meta.json").read_bytes())
    (ck / "meta.json").unlink()
    os.symlink(elsewhere, ck / "meta.json")
    return ck


def checkpoint_folder_symlinked(case: Path, g: Good) -> Path:
    """A run folder whose checkpoint/ is a symlink to a whole, valid checkpoint elsewhere."""
    shutil.copytree(g.checkpoint / "checkpoint", case / "elsewhere")
    (case / "run").mkdir()
    os.symlink(case / "elsewhere", case / "run" / "checkpoint")
    return case / "run"


CHECKPOINT_INPUTS = [
    ("meta.json a symlink out", meta_symlinked_outside,
     r"damaged checkpoint .*checkpoint: meta\.json is a symlink; every file of a checkpoint must lie inside it", 1),
    ("checkpoint folder a symlink", checkpoint_folder_symlinked,
     r"damaged checkpoint .*run: checkpoint is a symlink", 1),
    ("missing", lambda c, g: c / "nope" / "checkpoint", r"no pixdeploy checkpoint at", 1),
    ("empty folder", lambda c, g: (c / "ck").mkdir() or c / "ck", r"no pixdeploy checkpoint at", 1),
    ("meta garbage", damaged_checkpoint(lambda ck: write(ck / "meta.json", "{")), r"meta\.json unreadable", 1),
    ("meta a list", damaged_checkpoint(lambda ck: write(ck / "meta.json", "[]")), r"not a pixdeploy checkpoint", 1),
    ("weights truncated", damaged_checkpoint(truncate("model.safetensors", 200)), r"does not match its checksum", 1),
    ("weights truncated, sums match", damaged_checkpoint(truncated_weights_matching_sum),
     r"damaged checkpoint .*model\.safetensors", 1),
    ("config of another size", damaged_checkpoint(edit_meta(lambda m: m["config"].update(mlp_hidden=128))),
     r"does not fit its config: \d+ tensor\(s\) of another shape|is not the model of bundle .*configs differ", 1),
    ("file outside", damaged_checkpoint(edit_meta(lambda m: m["files"].update({"../../x": "0" * 64}))),
     r"meta\.json names '\.\./\.\./x', a path outside its folder", 1),
    ("step a string", damaged_checkpoint(edit_meta(lambda m: m.update(step="12"))),
     r"meta\.json field 'step' is '12', not an integer", 1),
]
DATA_INPUTS = [
    ("missing", lambda c, g: c / "nope", r"data path not found: .*nope", 1),
    ("single image", lambda c, g: write(c / "one.png", png_bytes()),
     r"--data takes a folder of images or a mixed text file; .*one\.png is a single image", 1),
    ("non-UTF-8 text", lambda c, g: write(c / "latin1.txt", "caf\xe9 <|image|>x.png<|/image|>".encode("latin-1")),
     r"latin1\.txt is not UTF-8 text \(byte 0xe9", 1),
    ("zero-byte text", lambda c, g: write(c / "empty.txt", b""),
     r"no images or text examples found in .*empty\.txt", 1),
    ("symlink loop", lambda c, g: symlink(c / "loop", "loop"), r"loop is a broken symlink or a symlink loop", 1),
    ("every ref escapes", mixed_file(["<|image|>../outside.png<|/image|> a", "<|image|>/etc/hosts<|/image|> b"]),
     r"no usable examples in .*mixed\.txt \(2 skipped; first: .*" + OUTSIDE, 1),
    ("unclosed tags only", mixed_file(["a <|image|>x.png", "<|/image|> b"], {"x.png": png_bytes()}),
     r"\(2 skipped; first: .*mixed\.txt:1: unclosed <\|image\|> tag", 1),
    ("ambiguous folder", images_and_readme_plus_mixed, r"is ambiguous: .*--data-kind mixed .*--data-kind images", 1),
    ("only broken images", lambda c, g: [write(c / "d" / f"{i}.png", b"broken") for i in range(3)][0].parent,
     r"no readable image in .*every file failed to decode \(first: cannot read image", 1),
    ("only symlink loops", lambda c, g: [symlink(c / "d" / f"{i}.png", f"{i}.png") for i in range(2)][0].parent,
     r"no usable examples in .*\(2 skipped; first: .*0\.png: broken symlink or symlink loop", 1),
]
OUT_DIR_INPUTS = [
    ("user folder", user_folder, r"notes (exists and )?is not (a pixdeploy|empty)", 1),
    ("a regular file", lambda c, g: write(c / "file.txt", "keep me"), r"file\.txt exists and is not a", 1),
    ("previous run without meta.json", run_without_meta,
     r"run (is not empty \(holds checkpoint, metrics\.jsonl\)|exists and is not a pixdeploy (bundle|Triton)"
     r"|is not a pixdeploy demo)", 1),
]
OUT_FILE_INPUTS = [
    ("a directory", lambda c, g: (c / "X.npy").mkdir() or c / "X.npy", r"X\.npy is a directory; give a file path$", 1),
    ("no parent folder", lambda c, g: c / "missing" / "v.npy", r"v\.npy: folder .*missing does not exist", 1),
    ("wrong suffix", lambda c, g: c / "v.txt", r"--out must end in \.npy or \.safetensors, got v\.txt", 1),
]
class EmptyPath(str):
    """'' as a path argument ('' would mean the current folder); ``parent`` lets a command put its other outputs
    beside it, as for any other value."""

    def __new__(cls, case: Path):
        value = super().__new__(cls, "")
        value.parent = case
        return value


EMPTY_PATH = ("empty path", lambda c, g: EmptyPath(c), r"an empty path was given", 2)
FLOAT_INPUTS = [(v, lambda c, g, v=v: v, r"is not a finite number", None)
                for v in ("nan", "NaN", "inf", "-inf", "1e999")]
# Numbers past an option's documented range are refused by the option itself, before any allocation.
INT_INPUTS = [(v, lambda c, g, v=v: v, r"is not in the range|is not a valid integer|is not a list of comma-separated "
               r"integers|must be within", None)
              for v in ("-1", "1e8", "99999999999999999999999", "nan")]

def nan_tiff(case: Path, g) -> Path:
    pixels = np.full((12, 12), np.nan, np.float32)
    pixels[0, 0] = 0.5
    Image.fromarray(pixels, mode="F").save(case / "nan.tiff")
    return case / "nan.tiff"


IMAGE_INPUTS.append(("float TIFF with NaN", nan_tiff, r"cannot convert image .*nan\.tiff to RGB: it holds NaN", 1))
IMAGE_INPUTS.append(("a FIFO", lambda c, g: os.mkfifo(c / "pipe.png") or c / "pipe.png",
                     r"pipe\.png is not a regular file \(a pipe, socket or device\)", 1))
for inputs in (IMAGE_INPUTS, BUNDLE_INPUTS, CHECKPOINT_INPUTS, DATA_INPUTS, OUT_DIR_INPUTS, OUT_FILE_INPUTS):
    inputs.append(EMPTY_PATH)
INPUTS = {"image": IMAGE_INPUTS, "bundle": BUNDLE_INPUTS, "checkpoint": CHECKPOINT_INPUTS, "data": DATA_INPUTS,
          "out_dir": OUT_DIR_INPUTS, "out_file": OUT_FILE_INPUTS, "float": FLOAT_INPUTS, "int": INT_INPUTS}

CASES = [pytest.param(cmd, role, *inp, id=f"{cmd}|{role}|{inp[0]}")
         for cmd, roles in COMMANDS.items() for role, inputs in INPUTS.items() if role in roles for inp in inputs]


# ---- what every case asserts ------------------------------------------------------------------------


def snapshot(root: Path) -> dict:
    """Every entry under ``root`` (hidden ones too, symlinks not followed) with its content digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif not p.is_file():  # a FIFO: reading it would block
                out[rel] = "special"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
    return result.exit_code, result.output


def expected_code(role: str, code):
    return 2 if role in ("float", "int") else code


@pytest.mark.parametrize("cmd, role, name, make, message, code", CASES)
def test_hostile_input_is_one_clear_line_and_changes_nothing(tmp_path, good, cmd, role, name, make, message, code):
    case = tmp_path / "case"
    case.mkdir()
    value = make(case, good)
    before, good_before = snapshot(case), snapshot(good.root)
    exit_code, output = invoke(COMMANDS[cmd][role](value, good))
    assert "Traceback" not in output
    assert snapshot(good.root) == good_before
    if message is None:  # readable despite the oddity: inspect reads what it needs, the others ignore it
        assert exit_code in (0, 1), output
        if exit_code == 1:
            assert len(output.strip().splitlines()) == 1 and output.startswith("error: ")
        return
    lines = output.strip().splitlines()
    assert exit_code == expected_code(role, code), output
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert re.search(message, lines[0]), output
    assert snapshot(case) == before, "the command wrote or removed something"


# ---- inputs that must work ----------------------------------------------------------------------------

FORMATS = {"png": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "tiff": ("CMYK", "F", "I", "LAB", "YCbCr"),
           "jpg": ("L", "RGB", "CMYK"), "webp": ("RGB", "RGBA"), "bmp": ("1", "L", "P", "RGB"), "gif": ("L", "P")}
READABLE_IMAGES = [(mode, fmt) for fmt, modes in FORMATS.items() for mode in modes]


def make_mode_image(path: Path, mode: str) -> Path:
    rgb = Image.effect_mandelbrot((37, 23), (-2, -1, 1, 1), 40).convert("RGB")
    grey = np.asarray(rgb.convert("L"))
    if mode in ("I", "I;16"):  # 16-bit range, as scanners and medical images write it
        img = Image.fromarray((grey.astype(np.int32) * 257).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        img = Image.fromarray(grey.astype(np.float32) / 7.0)
    elif mode == "LAB":
        img = Image.merge("LAB", rgb.split())
    else:
        img = rgb.convert(mode)
    img.save(path)
    return path


@pytest.mark.parametrize("mode, fmt", READABLE_IMAGES, ids=[f"{m}.{f}" for m, f in READABLE_IMAGES])
def test_every_pillow_mode_reads_through_generate_and_embed(tmp_path, good, mode, fmt):
    path = make_mode_image(tmp_path / f"img.{fmt}", mode)
    code, output = invoke(["generate", good.bundle, path, "--max-new-tokens", "2"])
    assert code == 0 and output.startswith(f"{path}\t"), output
    code, output = invoke(["embed", good.bundle, path, "-o", tmp_path / "v.npy"])
    assert code == 0, output
    vectors = np.load(tmp_path / "v.npy", allow_pickle=False)
    assert vectors.shape[0] == 1 and np.isfinite(vectors).all()


# ---- what a real process is needed for ---------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_export_leaves_temporaries_the_next_export_removes_and_reports(tmp_path, good):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "pixdeploy.cli", "export", str(good.checkpoint), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any((p / "image_encoder.onnx").exists() for p in tmp_path.glob(".bundle.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "export ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    # the exporter's third-party noise (torchvision not installed, a FutureWarning) is not shown
    assert "torchvision" not in stderr.decode() and "Warning" not in stderr.decode(), stderr.decode()
    left = [p.name for p in tmp_path.iterdir()]
    assert left == [f".bundle.tmp-{proc.pid}"] and not out.exists()
    code, output = invoke(["export", good.checkpoint, "-o", out])
    assert code == 0, output
    assert f"removed 1 temporary file(s) left by an interrupted run: .bundle.tmp-{proc.pid}" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert invoke(["inspect", out])[0] == 0
