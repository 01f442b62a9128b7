"""Text from untrusted files reaches the terminal with its control characters escaped."""

import shutil

from click.testing import CliRunner

from pixdeploy.cli import main
from pixdeploy.text import printable


def test_printable_escapes_every_control_and_keeps_text():
    assert printable("plain text, é, 数字 and spaces") == "plain text, é, 数字 and spaces"
    assert printable("\x1b]0;owned\x07title") == "\\x1b]0;owned\\x07title"  # sets a window title
    assert printable("\x1b[2J\x1b[H") == "\\x1b[2J\\x1b[H"  # clears the screen
    assert printable("a\nerror: forged\rb\tc") == "a\\nerror: forged\\rb\\tc"
    assert printable("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"  # NUL, DEL, C1 NEL and CSI
    assert printable("abc\u202edcba\u200b\u2028") == "abc\\u202edcba\\u200b\\u2028"  # bidi override, zero width
    assert printable("\U000e0001\udce9") == "\\U000e0001\\xe9"  # a tag character; a file name's byte 0xe9
    assert printable(42) == "42"
    assert all(c.isprintable() for c in printable("".join(map(chr, range(0x2100)))))


def test_file_names_and_generated_text_print_escaped(tmp_path, tiny_bundle, photo):
    image = tmp_path / "\x1b]0;owned\x07.png"
    photo.resize((64, 48)).save(image)
    result = CliRunner().invoke(main, ["generate", str(tiny_bundle), str(image), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert result.output.startswith(f"{tmp_path}/\\x1b]0;owned\\x07.png\t")
    assert len(result.output.splitlines()) == 1

    broken = tmp_path / "\x1b[2Jcut.png"
    broken.write_bytes(b"\x89PNG\r\n")
    result = CliRunner().invoke(main, ["generate", str(tiny_bundle), str(broken)])
    assert result.exit_code == 1 and "\x1b" not in result.output
    assert result.output.startswith("error: ") and "\\x1b[2Jcut.png" in result.output


def test_checkpoint_paths_print_escaped(tmp_path, tiny_checkpoint):
    """A checkpoint folder whose name holds an escape sequence: an error about it stays one escaped line."""
    run = tmp_path / "run\x1b]0;owned\x07"  # an OSC sequence: click strips CSI ones when piped, not these
    shutil.copytree(tiny_checkpoint, run)
    (run / "checkpoint" / "meta.json").write_text("[]")
    result = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "\x1b" not in result.output, result.output
    assert len(result.output.splitlines()) == 1 and "run\\x1b]0;owned\\x07" in result.output
