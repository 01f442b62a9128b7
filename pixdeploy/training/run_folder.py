"""The run folder (``--out``): which folders a run may write, the checkpoint a resume continues, and the lock
that keeps a second run out while one trains there."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pixdeploy.checkpoint import CKPT_DIR, find_checkpoint
from pixdeploy.errors import CheckpointError, PixdeployError
from pixdeploy.files import clean_stale, try_lock
from pixdeploy.training.distributed import Dist


def check_run_dir(out: Path, resume: bool, echo=None) -> Path | None:
    """Refuse, before any work, a run directory that is not ours to write; returns the checkpoint to
    resume from. Without --resume, a folder holding anything (a previous run, even a damaged one, or
    the user's files) is never written into; temporaries of a killed save are removed and reported."""
    if out.exists() and not out.is_dir():
        raise PixdeployError(f"--out {out} exists and is not a folder")
    if not out.is_dir():
        if resume and echo:  # a run stopped before its first checkpoint leaves nothing (see `MetricsLog`)
            echo(f"no checkpoint in {out} yet: training from step 0")
        return None
    clean_stale(out / CKPT_DIR, echo)
    existing = find_checkpoint(out)
    if resume:
        if existing is None:
            if (out / CKPT_DIR).exists():
                raise CheckpointError(f"cannot resume: {out / CKPT_DIR} is damaged (meta.json missing); "
                                      "nothing was changed")
            if any(out.iterdir()):
                raise CheckpointError(f"--resume given but {out} holds no checkpoint (and is not empty)")
            if echo:
                echo(f"no checkpoint in {out} yet: training from step 0")
        return existing
    if existing is not None:
        raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue it "
                              "or choose another --out")
    held = sorted(p.name for p in out.iterdir())
    if held:
        raise PixdeployError(f"{out} is not empty (holds {', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); "
                             "a new run needs a new or empty --out (--resume continues a run with a checkpoint)")
    return None


@contextlib.contextmanager
def run_lock(out: Path, d: Dist):
    """Rank 0 holds a lock on the run folder for the whole run: a second `train` on the same folder (two
    --resume, or two new runs) is refused in one line instead of both writing checkpoints and metrics. A
    folder made here and still empty when the run ends early is removed."""
    if not d.main:
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with try_lock(out, f"another pixdeploy process is training in {out}; wait for it to finish (or stop it) "
                      "before starting another run there"):
            yield
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
