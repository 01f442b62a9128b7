"""The `pixdeploy` command group, its error handling and the helpers the stage modules share (printing, path and
number option types). Every user error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from pixdeploy import __version__
from pixdeploy.errors import PixdeployError
from pixdeploy.text import printable  # every line naming a path or quoting a file goes through it

# Optional heavy dependencies and the extra that installs each (a runtime-only install has none).
EXTRAS = {"torch": "train", "onnx": "train", "onnxscript": "train", "onnxruntime": "onnx", "sklearn": "train"}


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PixdeployError as e:
            say(f"error: {e}", fg="red", err=True)
            sys.exit(1)
        except ModuleNotFoundError as e:
            extra = EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            say(f"error: this command needs {e.name}: pip install \"pixdeploy[{extra}]\"", fg="red", err=True)
            sys.exit(1)
        except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
            say(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            say("interrupted", err=True)
            sys.exit(130)
        except click.UsageError as e:
            # A bad option value is a user error like any other: one line (click would print the usage
            # block and a hint first), with click's exit status 2 and where to read more.
            where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
            say(f"error: {e.format_message()}{where}", fg="red", err=True)
            sys.exit(e.exit_code)
        except Exception as e:
            if not interrupted(e):
                raise
            say("interrupted", err=True)  # a library turned Ctrl-C into its own error (the ONNX exporter)
            sys.exit(130)


class PathArg(click.Path):
    """A path argument or option (as a `Path`); an empty one is refused: '' would otherwise mean the current
    folder, and a command would read or write there."""

    def __init__(self, **kwargs):
        super().__init__(path_type=Path, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path was given", param, ctx)
        return super().convert(value, param, ctx)


def interrupted(e: BaseException) -> bool:
    """Whether an error was caused by Ctrl-C: a KeyboardInterrupt anywhere in its chain of causes."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def say(*fields: object, sep: str = " ", err: bool = False, nl: bool = True, fg: str | None = None) -> None:
    """The one way a command prints: ``fields`` as one line, joined by ``sep``, each with every character
    that is not printable text escaped (`pixdeploy.text.printable`): an ESC sequence from a folder name, a
    file or a model's answer shows as typed, and a newline or tab in it shows as ``\\n`` or ``\\t`` instead
    of forging a line or a column. A block of lines goes through `say_lines`."""
    click.secho(sep.join(printable(f) for f in fields), err=err, nl=nl, fg=fg)


def say_lines(block: str, err: bool = False) -> None:
    """A block pixdeploy composed (a table), one `say` per line: its values must not hold newlines of their
    own (each line is escaped, so a value's control characters still show as typed)."""
    for line in str(block).split("\n"):
        say(line, err=err)


echo_line = say  # progress lines from the library (they name paths, files, data)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="pixdeploy")
def main():
    """Train, export and run pixel-token language models (arXiv 2605.14028)."""


class FiniteFloat(click.FloatRange):
    """A float option that rejects NaN and infinity: they pass every range comparison (NaN) or break
    arithmetic far from the command line (inf), so they are refused where the user typed them.
    Every float option of every command uses this type."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def image_list(paths, read: bool = False) -> list[Path]:
    """Files as given; folders expanded to the images inside them. ``read``: open each one now, so a
    bad image is reported before long work (an export) rather than after it."""
    from pixdeploy.data import find_images
    from pixdeploy.folding import load_image

    out = []
    for p in map(Path, paths):
        out += find_images(p) if p.is_dir() else [p]
    if not out:
        raise PixdeployError("no images given (or the folders hold none)")
    if read:
        for p in out:
            load_image(p)
    return out


def parse_overrides(items: tuple[str, ...]) -> dict:
    """--set key=value pairs; values are JSON (numbers, true/false) or plain strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PixdeployError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
        number = out[key.strip()]
        if isinstance(number, float) and not math.isfinite(number):  # json reads NaN and Infinity
            raise PixdeployError(f"--set {key.strip()}: {value!r} is not a finite number")
    return out
