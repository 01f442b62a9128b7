"""Checkpoints: a directory of safetensors + JSON, written atomically, read without pickle.

    <out>/checkpoint/
        meta.json              format, version, step, model config, file checksums
        model.safetensors      weights (fp32)
        tokenizer.json
        train_state.safetensors / train_state.json   optimizer tensors / scalars, RNG (resume only)

A save writes a temporary directory, fsyncs it, then swaps it in with renames; a crash at any point
leaves either the old or the new checkpoint whole (`find_checkpoint` also recovers the moment between
the two renames).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixdeploy.config import ModelConfig
from pixdeploy.errors import CheckpointError, PixdeployError
from pixdeploy.files import clean_stale, replace_dir, sha256, temp_path, write_error
from pixdeploy.jsonfile import BadJson, brief, inside, load_json, need
from pixdeploy.tokenizer import Tokenizer

FORMAT = "pixdeploy-checkpoint"
VERSION = 1
CKPT_DIR, OLD_DIR = "checkpoint", ".checkpoint.old"
REQUIRED = ("model.safetensors", "tokenizer.json")  # listed in meta.json's files by every checkpoint


def save_checkpoint(out: Path, model_state: dict, cfg: ModelConfig, tok: Tokenizer, step: int,
                    train_state: tuple[dict, dict] | None = None) -> Path:
    """Write ``<out>/checkpoint``. ``train_state``, what a resume needs beyond the weights, is the pair
    `Checkpoint.train_state` gives back: (optimizer tensors and RNG, JSON-able scalars)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out / CKPT_DIR)  # left by a save that was killed mid-write (train reports them at start)
    tmp = temp_path(out / CKPT_DIR)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().float().contiguous().cpu() for k, v in model_state.items()},
                  tmp / "model.safetensors")
        tok.save(tmp / "tokenizer.json")
        if train_state is not None:
            train_tensors, train_json = train_state
            save_file({k: v.contiguous().cpu() for k, v in train_tensors.items()}, tmp / "train_state.safetensors")
            (tmp / "train_state.json").write_text(json.dumps(train_json), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        meta = {"format": FORMAT, "version": VERSION, "step": step, "config": cfg.to_dict(),
                "files": {name: sha256(tmp / name) for name in files}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        replace_dir(tmp, out / CKPT_DIR, out / OLD_DIR)
    except (OSError, SafetensorError) as e:  # a full disk above all: one line, the previous checkpoint kept
        raise write_error(e, out / CKPT_DIR) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / CKPT_DIR


def find_checkpoint(path: Path) -> Path | None:
    """A checkpoint directory itself, or a training output holding one (or its pre-swap backup).

    What lies under the path the user gave is the checkpoint's own: its ``meta.json`` and the
    checkpoint folder of a run are refused (`CheckpointError`) when they are symlinks, which could
    point anywhere; nothing is opened."""
    path = Path(path)
    if os.path.lexists(path / "meta.json"):
        _no_symlink(path, "meta.json")
        return path
    for name in (CKPT_DIR, OLD_DIR):
        if os.path.lexists(path / name / "meta.json"):
            _no_symlink(path, f"{name}/meta.json")
            return path / name
    return None


def _no_symlink(root: Path, rel: str) -> None:
    """Refuse ``root / rel`` unless every step below ``root`` is a real folder or, last, a regular file."""
    at = Path(root)
    parts = rel.split("/")
    for i, part in enumerate(parts):
        at = at / part
        st = at.lstat()
        where = "/".join(parts[: i + 1])
        if stat.S_ISLNK(st.st_mode):
            raise CheckpointError(f"damaged checkpoint {root}: {where} is a symlink; every file of a checkpoint "
                                  "must lie inside it, reached through no symlink")
        last = i == len(parts) - 1
        if (last and not stat.S_ISREG(st.st_mode)) or (not last and not stat.S_ISDIR(st.st_mode)):
            raise CheckpointError(f"damaged checkpoint {root}: {where} is not a regular "
                                  f"{'file' if last else 'folder'}")


class Checkpoint:
    """A verified checkpoint on disk: config, tokenizer, step; tensors loaded on demand."""

    def __init__(self, path: str | os.PathLike):
        found = find_checkpoint(Path(path))
        if found is None:
            raise CheckpointError(f"no pixdeploy checkpoint at {path} (expected meta.json)")
        self.path = found
        try:
            meta = load_json(found / "meta.json")
        except OSError as e:
            raise CheckpointError(f"damaged checkpoint {found}: meta.json unreadable ({e.strerror or e})") from None
        except BadJson as e:
            raise CheckpointError(f"damaged checkpoint {found}: meta.json unreadable: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{found} is not a pixdeploy checkpoint")
        version = meta.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
            raise CheckpointError(f"checkpoint {found} has format version {brief(version)}; "
                                  f"this pixdeploy reads version {VERSION}")
        try:
            # Every file meta.json names is checked to stay inside the checkpoint, through no symlink,
            # before any of them is opened.
            files = need(meta, "files", "an object")
            for name in REQUIRED:
                if name not in files:
                    raise BadJson(f"does not list {name}")
            self._files = {name: inside(found, name) for name in files}
            digests = {name: need(files, name, "a string", where="files") for name in files}
            step = need(meta, "step", "an integer", default=0)
            if step < 0:
                raise BadJson(f"field 'step' is {step}, not a count of steps")
            config = need(meta, "config", "an object")
        except BadJson as e:
            raise CheckpointError(f"damaged checkpoint {found}: meta.json {e}") from None
        for name, digest in digests.items():
            f = self._files[name]
            if not f.is_file():
                raise CheckpointError(f"damaged checkpoint {found}: {name} is missing")
            if sha256(f) != digest:
                raise CheckpointError(f"damaged checkpoint {found}: {name} does not match its checksum")
        try:
            self.config = ModelConfig.from_dict(config)
            self.tokenizer = Tokenizer.load(self._files["tokenizer.json"])
        except (KeyError, TypeError, PixdeployError) as e:
            raise CheckpointError(f"damaged checkpoint {found}: {e}") from None
        self.step = step
        self.meta = meta

    def _file(self, name: str) -> Path:
        """A file of the checkpoint that meta.json lists (and so was checked and checksummed)."""
        if name not in self._files:
            raise CheckpointError(f"damaged checkpoint {self.path}: meta.json does not list {name}")
        return self._files[name]

    def _load(self, name: str) -> dict:
        try:
            return load_file(self._file(name))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"damaged checkpoint {self.path}: {name}: {e}") from None

    def model_state(self) -> dict:
        return self._load("model.safetensors")

    def has_train_state(self) -> bool:
        return "train_state.safetensors" in self._files

    def train_state(self) -> tuple[dict, dict]:
        if not self.has_train_state():
            raise CheckpointError(f"checkpoint {self.path} has no training state to resume from")
        try:
            state = load_json(self._file("train_state.json"))
            if not isinstance(state, dict):
                raise BadJson("is not an object")
            groups = need(state, "param_groups", "a list")
            if not groups or not all(isinstance(g, dict) for g in groups):
                raise BadJson("field 'param_groups' is not a list of objects")
            need(state, "scaler", "an object", default=None)
        except OSError as e:
            raise CheckpointError(f"damaged checkpoint {self.path}: train_state.json unreadable "
                                  f"({e.strerror or e})") from None
        except BadJson as e:
            raise CheckpointError(f"damaged checkpoint {self.path}: train_state.json {e}") from None
        return self._load("train_state.safetensors"), state

    def load_model(self, device="cpu"):
        from pixdeploy.model import PixTokenLM

        # meta.json's config is not checksummed: check it against the weights' shapes on the meta device
        # (nothing allocated) before building the model it describes, which may be of any size.
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in PixTokenLM(self.config).state_dict().items()}
        state = self.model_state()
        missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {self.path} does not fit its config "
                                  f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
        wrong = sorted(k for k in expected if tuple(state[k].shape) != expected[k])
        if wrong:
            k = wrong[0]
            raise CheckpointError(f"checkpoint {self.path} does not fit its config: {len(wrong)} tensor(s) of "
                                  f"another shape ({k}: {tuple(state[k].shape)}, the config makes {expected[k]})")
        model = PixTokenLM(self.config)
        model.load_state_dict(state)
        return model.to(device).eval()


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as (tensors, JSON): no pickle."""
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
