"""Text from files a user did not write, made safe to print.

A bundle's producer, an engine header, a checkpoint's meta.json, a bench report, a file name, a model's
generated text: any of them may hold control characters, and a terminal obeys those (ESC sequences set
the window title, clear the screen, move the cursor; a newline forges a line of output; U+202E reverses
what follows). ``printable`` escapes everything that is not printable text, so what reaches the
terminal, or a pipe read by one later, is what the file said, shown. Torch-free.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def utf8_problem(text: str) -> str | None:
    """None for text that encodes as UTF-8; otherwise where it does not, in words. A command-line argument
    that is not valid UTF-8 reaches Python with its undecodable bytes as surrogate escapes (U+DC80..U+DCFF)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        return f"is not valid UTF-8 text ({what} at character {e.start})"
    return None


def printable(text: object) -> str:
    """``text`` (``str()`` of it) with every character that is not printable escaped, plain space kept:
    C0 controls, DEL and C1 controls as ``\\x1b``, newline, carriage return and tab as ``\\n``, ``\\r``,
    ``\\t``, other non-printables (format characters such as U+202E, separators other than space,
    unassigned code points) as ``\\u202e`` or ``\\U000e0001``. An undecodable byte of a file name (a
    surrogate escape, U+DC80..U+DCFF) is shown as the byte, ``\\xe9``."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of the byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)
