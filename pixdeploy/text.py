"""Text from untrusted artifacts (bundles, checkpoints, reports), made safe to print on a terminal."""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """``text`` with control and other non-printing characters escaped (``\\x1b``, ``\\u202e``): an escape
    sequence read from a file must not set a terminal's title, move its cursor or clear its screen, and a
    message stays one line. Bytes of a file name that are not UTF-8 are shown as U+FFFD."""
    text = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # undecodable file names
    out = []
    for ch in text:
        if ch == " " or (ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zl", "Zp")):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)
