"""File helpers shared by every writer (checkpoints, bundles, variants, engines, repositories; torch-free).

Every artifact is written the same way: into a hidden temporary sibling named after the target
(``.NAME.tmp-PID``), then renamed into place; a directory being replaced is first renamed to
``.NAME.old-PID``. A writer killed at any moment therefore leaves the target whole (old or new) plus
temporaries whose PID no longer runs; the next writer of the same target finds them, removes them (or
restores an old version the swap had moved aside) and says so.

Writers that change a folder in place (a bundle's manifest gaining a variant or an engine set) hold
`locked_dir` on it, so two of them never read the same manifest and each write back their own.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pixdeploy.errors import PixdeployError

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_tree(path: Path) -> None:
    """Flush every file of a directory tree, then the directories, before it is renamed into place."""
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir() and not p.is_symlink():
            fsync_dir(p)
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """The hidden sibling a writer of ``final`` uses: ``.NAME.tmp-PID`` (being written) or ``.NAME.old-PID``."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}"


def _no_room(e: BaseException) -> str | None:
    """"full" for an error of a full disk (or quota), "too large" for one of a file-size limit, else None (numpy
    reports a full disk as "N requested and M written", safetensors as a failed write of the whole buffer or an
    "os error" number)."""
    import errno

    text = str(getattr(e, "strerror", None) or e)
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "requested and" in text or "whole buffer" in text \
            or "No space left" in text or f"(os error {errno.ENOSPC})" in text:
        return "full"
    if code == errno.EFBIG or "File too large" in text or f"(os error {errno.EFBIG})" in text:
        return "too large"
    return None


def write_error(e: BaseException, path) -> PixdeployError:
    """One line for a failed write that names the path and, when the disk is full or a file outgrew the
    largest file allowed, says so."""
    room = _no_room(e)
    if room == "full":
        return PixdeployError(f"cannot write {path}: no space left on the disk holding it; nothing was replaced")
    if room == "too large":
        return PixdeployError(f"cannot write {path}: a file grew past the largest size allowed (the file-size "
                              "limit, ulimit -f, or the file system's); nothing was replaced")
    return PixdeployError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")


@contextmanager
def writing(target) -> Iterator[None]:
    """A full disk or a file-size limit met anywhere in the block (a library writing a graph, numpy, a copy)
    is one line naming ``target``, the output the user asked for, not a temporary or an input."""
    try:
        yield
    except OSError as e:
        if _no_room(e) is None:
            raise
        raise write_error(e, target) from None


def parse_temp(name: str) -> tuple[str, bool] | None:
    """For a writer's temporary ``.NAME.tmp-PID`` / ``.NAME.old-PID``: (NAME, whether its writer still runs);
    None for any other name."""
    m = _TEMP.match(name)
    return None if m is None else (m["name"], _pid_alive(int(m["pid"])))


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (this process counts as alive)."""
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def clean_stale(final: Path, echo: Callable[[str], None] | None = None) -> list[Path]:
    """Remove what killed writers of ``final`` left beside it; returns what was removed.

    A ``.NAME.old-PID`` whose target is missing is the previous version caught between the two
    renames of a swap: it is renamed back rather than deleted. Temporaries of a writer that is still
    running (its PID is alive) are left alone.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    removed = []
    for p in sorted(final.parent.iterdir()):
        m = _TEMP.match(p.name)
        if not m or m["name"] != final.name or _pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not final.exists() and not final.is_symlink():
            os.replace(p, final)
            if echo:
                echo(f"restored {final} from an interrupted replace")
            continue
        _remove(p)
        removed.append(p)
    if removed and echo:
        echo(f"removed {len(removed)} temporary file(s) left by an interrupted run: "
             + ", ".join(p.name for p in removed))
    return removed


# Temporary folders a pixdeploy process makes under the system's temporary folder (TMPDIR/PREFIX-PID-XXXX), each
# holding a marker that names its PID: a process killed with -9 cannot remove them, the next pixdeploy command
# that makes one does (`sweep_marked_temp_dirs`), once that PID no longer runs. Anything without the marker,
# whatever its name, is never removed.
TEMP_MARKER = ".pixdeploy-serve"  # the name the first user of these folders (serve) gave it
_TEMP_FORMAT = "pixdeploy-serve-temporary"
_MARKED = re.compile(r"^pixdeploy-[a-z0-9-]*?-(?P<pid>\d+)-")


def marked_temp_dir(prefix: str) -> Path:
    """A new private temporary folder ``PREFIX-PID-XXXX`` (``prefix``: ``pixdeploy-WHAT-``) marked as this
    process's; the caller removes it (`marked_temp` does)."""
    import json
    import tempfile

    if not re.fullmatch(r"pixdeploy-[a-z0-9-]+-", prefix):
        raise ValueError(f"a marked temporary folder's prefix is pixdeploy-WHAT-, not {prefix!r}")
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    (folder / TEMP_MARKER).write_text(json.dumps({"format": _TEMP_FORMAT, "pid": os.getpid()}), encoding="utf-8")
    return folder


@contextmanager
def marked_temp(prefix: str) -> Iterator[Path]:
    """`marked_temp_dir` for the length of a block, removed after it whatever happens (a kill -9 excepted: the
    next sweep removes it)."""
    folder = marked_temp_dir(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_marked_temp_dirs(echo) -> list[Path]:
    """Remove the marked temporary folders of pixdeploy processes of this user that died without removing them: a
    folder named ``pixdeploy-WHAT-PID-*`` in the temporary folder, holding the marker that names that PID, whose
    process no longer runs. Anything else, whatever its name, is left alone."""
    import stat
    import tempfile

    from pixdeploy.jsonfile import BadJson, load_json

    root = Path(tempfile.gettempdir())
    try:
        candidates = sorted(root.iterdir())
    except OSError:
        return []
    removed = []
    for p in candidates:
        m = _MARKED.match(p.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        try:
            st, mark = p.lstat(), (p / TEMP_MARKER).lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or not stat.S_ISREG(mark.st_mode):
                continue
            info = load_json(p / TEMP_MARKER, max_bytes=4096)
        except (OSError, BadJson):
            continue
        if isinstance(info, dict) and info.get("format") == _TEMP_FORMAT and info.get("pid") == int(m["pid"]):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            echo(f"removed {p}, a temporary folder of a pixdeploy command that was killed")
    return removed


@contextmanager
def locked_dir(path: Path, echo: Callable[[str], None] | None = None, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on folder ``path`` for the block; another holder makes this one wait, or, with
    ``busy``, refuses it with PixdeployError(``busy``) (for work too long to wait for, such as a training run).

    flock on the folder itself: no lock file to leave behind, and the kernel drops the lock when its
    holder dies, even by kill -9. Advisory: it orders pixdeploy's own writers. A process must not take
    it twice (a second open of the folder would wait on the first).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent-writer protection
        yield
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is not None:
                raise PixdeployError(busy) from None
            if echo is not None:
                echo(f"waiting for another pixdeploy process to finish changing {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock(path: Path, busy: str):
    """`locked_dir` that refuses with ``busy`` instead of waiting."""
    return locked_dir(path, busy=busy)


def replace_dir(new: Path, final: Path, backup: Path | None = None, replace: bool = True) -> None:
    """Swap a fully written directory into place with renames. A crash between them leaves the old
    version whole at ``backup`` (`clean_stale` and loaders look there); the backup is removed once the swap is done.
    With ``replace=False`` a ``final`` that appeared meanwhile (another writer of the same new target) is kept
    and this writer is refused."""
    backup = backup or temp_path(final, "old")
    fsync_tree(new)
    if not replace:
        try:
            os.rename(new, final)  # fails on an existing non-empty folder or a file: nothing is replaced
        except OSError:
            raise PixdeployError(f"{final} was written by another process while this one ran; it is kept and "
                                 "this output was discarded (pass --force to replace it)") from None
        fsync_dir(final.parent)
        return
    if final.exists():
        _remove(backup)
        os.replace(final, backup)
    os.replace(new, final)
    fsync_dir(final.parent)
    _remove(backup)


@contextmanager
def staged_dir(final: Path, *, replace: bool = False, what: str = "output",
               is_replaceable: Callable[[Path], bool] | None = None,
               echo: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Write a directory artifact atomically: yields an empty temporary directory; when the block ends
    without an error it replaces ``final``; on any error (or Ctrl-C) nothing at ``final`` changes.

    An existing ``final`` is replaced only with ``replace=True`` (the user's --force) and only when
    ``is_replaceable(final)`` says it is an artifact of the same kind: --force never deletes a user's
    folder or file that pixdeploy did not write.
    """
    final = Path(final)
    check_replaceable(final, replace=replace, what=what, is_replaceable=is_replaceable)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final, echo)
    tmp = temp_path(final)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final, replace=replace or final.is_dir() and not any(final.iterdir()))
    finally:
        _remove(tmp)


def check_not_inside(out, artifact) -> None:
    """Refuse an output path that lies inside an input artifact (a bundle, a run folder), or that holds it:
    writing there would change or delete what the command reads. Paths are compared resolved, so a
    symlink or ``..`` on the way does not hide it."""
    if str(out) == "":
        raise PixdeployError("an empty output path was given; name a file or folder")
    o, a = Path(os.path.realpath(out)), Path(os.path.realpath(artifact))
    if o == a or a in o.parents:
        raise PixdeployError(f"{out} lies inside {artifact}, which this command reads; choose an output outside it")
    if o in a.parents:
        raise PixdeployError(f"{out} holds {artifact}, which this command reads; choose another output")


def check_replaceable(final: Path, *, replace: bool, what: str,
                      is_replaceable: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before any work, to write over something that is not ours to replace."""
    if not (final.exists() or final.is_symlink()):
        return
    if not replace:
        raise PixdeployError(f"{final} already exists; pass --force to replace it")
    if final.is_symlink() or not final.is_dir() or (is_replaceable is not None and not is_replaceable(final)):
        raise PixdeployError(f"{final} exists and is not a {what}; refusing to replace it (choose another path)")


@contextmanager
def staged_file(final: Path, echo: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Write one file atomically: yields a temporary path beside ``final``; renamed into place when the
    block ends without an error, removed otherwise. Errors name ``final``, the path the user gave."""
    final = check_file_target(final)
    clean_stale(final, echo)
    tmp = temp_path(final)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        raise write_error(e, final) from None
    finally:
        tmp.unlink(missing_ok=True)


def check_file_target(final: Path) -> Path:
    """Refuse, before any work, a file path that cannot be written (a folder, a missing parent)."""
    final = Path(final)
    if final.is_dir():
        raise PixdeployError(f"{final} is a directory; give a file path")
    if not final.parent.is_dir():
        raise PixdeployError(f"{final}: folder {final.parent} does not exist")
    return final
