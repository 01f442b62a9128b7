"""JSON files a user hands pixdeploy, read as untrusted input.

``load_json`` parses strictly and says in one ``BadJson`` reason what is wrong with a document: not
UTF-8, not JSON, too large, nested too deep for the parser, a NaN or Infinity figure (Python's json reads
them; JSON has no such numbers), a number past what a float or a 64-bit integer holds. Each reader then
checks the document's shape with ``need`` and turns a ``BadJson`` into its own one-line error naming the
file. Torch-free.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

MAX_BYTES = 256 << 20  # no pixdeploy JSON file comes near this; a larger one is not one of ours
MAX_INT = 1 << 63


class BadJson(ValueError):
    """What is wrong with a JSON document, in a few words (the reader names the file)."""


def _constant(name: str):
    raise BadJson(f"holds {name}, which is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"holds the number {brief(text)}, past what a float holds")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) >= MAX_INT:
        raise BadJson(f"holds the integer {brief(text)}, past 64 bits")
    return value


def loads(data: bytes) -> object:
    """Parse a JSON document (bytes, UTF-8) strictly; ``BadJson`` says why one is refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJson(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except BadJson:
        raise
    except RecursionError:
        raise BadJson("nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError among them
        raise BadJson(f"not JSON ({e})") from None


def load_json(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> object:
    """Read and parse a JSON file strictly. ``OSError`` when it cannot be read; ``BadJson`` when it is
    not a JSON document pixdeploy accepts."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadJson(f"larger than {max_bytes} bytes")
    return loads(data)


def brief(value: object, limit: int = 40) -> str:
    """A short repr of a value from a document, for an error message (the CLI escapes what it prints)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_KINDS = {
    "an object": lambda v: isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "a positive number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    and v > 0,
    "true or false": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def need(doc: dict, key: str, *kinds: str, where: str = "", default=...) -> object:
    """``doc[key]``, which must be one of ``kinds`` (names in ``_KINDS``); ``default`` when it is absent
    and a default is given. ``BadJson`` otherwise."""
    at = f"{where}.{key}" if where else key
    if key not in doc:
        if default is not ...:
            return default
        raise BadJson(f"has no {at!r} field")
    value = doc[key]
    if not any(_KINDS[k](value) for k in kinds):
        raise BadJson(f"field {at!r} is {brief(value)}, not {' or '.join(kinds)}")
    return value


def inside(folder: Path, name: object) -> Path:
    """``folder / name`` for a relative path ``name`` read from a file in ``folder``, refused (``BadJson``)
    unless it stays inside ``folder`` with no symlink on the way and names a regular file (absent is
    allowed: the caller says what is missing). Nothing is opened."""
    if not isinstance(name, str) or not name:
        raise BadJson(f"names the file {brief(name)}, not a file name")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise BadJson(f"names {brief(name)}, a path outside its folder or not a plain relative path")
    try:
        os.fsencode(name)
    except UnicodeError:
        raise BadJson(f"names {brief(name)}, which no file system can hold") from None
    path = Path(folder)
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = path.lstat()
        except FileNotFoundError:
            return Path(folder, *parts)
        except OSError as e:
            raise BadJson(f"names {brief(name)}, which cannot be looked at ({e.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise BadJson(f"names {brief(name)}, which is or passes through a symlink")
        last = i == len(parts) - 1
        if (last and not stat.S_ISREG(st.st_mode)) or (not last and not stat.S_ISDIR(st.st_mode)):
            raise BadJson(f"names {brief(name)}, which is not a regular file")
    return path
