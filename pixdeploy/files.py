"""File helpers shared by checkpoints and bundles (torch-free)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_tree(path: Path) -> None:
    """Flush every file of a directory, then the directory itself, before it is renamed into place."""
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, final: Path, backup: Path) -> None:
    """Swap a fully written directory into place with renames. A crash between them leaves the old
    version whole at ``backup`` (a loader may look there); the backup is removed once the swap is done."""
    fsync_tree(new)
    if final.exists():
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(final, backup)
    os.replace(new, final)
    fsync_dir(final.parent)
    shutil.rmtree(backup, ignore_errors=True)
