"""The `pixdeploy` command line. Every user error is one line on stderr and a non-zero exit.

One module per stage registers its commands on `main`; this module holds the group, its error
handling and the helpers the stages share."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pixdeploy import __version__
from pixdeploy.errors import PixdeployError

# Optional heavy dependencies and the extra that installs each (a runtime-only install has none).
EXTRAS = {"torch": "train", "onnx": "train", "onnxscript": "train", "onnxruntime": "onnx", "sklearn": "train"}


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PixdeployError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)
        except ModuleNotFoundError as e:
            extra = EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            click.secho(f"error: this command needs {e.name}: pip install \"pixdeploy[{extra}]\"", fg="red", err=True)
            sys.exit(1)
        except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
            click.secho(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="pixdeploy")
def main():
    """Train, export and run pixel-token language models (arXiv 2605.14028)."""


def image_list(paths) -> list[Path]:
    """Files as given; folders expanded to the images inside them."""
    from pixdeploy.data import find_images

    out = []
    for p in map(Path, paths):
        out += find_images(p) if p.is_dir() else [p]
    if not out:
        raise PixdeployError("no images given (or the folders hold none)")
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
    return out




# The stages register their commands on import (kept last: they import `main` from here).
from pixdeploy.cli import engine, export, inspect, quantize, run, train  # noqa: E402, F401
