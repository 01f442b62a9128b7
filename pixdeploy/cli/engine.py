"""`build-engine`: a bundle's graphs -> TensorRT engines for this GPU (a thin layer over `pixdeploy.export.engine`)."""

from __future__ import annotations

import re

import click

from pixdeploy.cli import PathArg, echo_line, main, printable
from pixdeploy.errors import PixdeployError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'2G', '512M', '1073741824' -> bytes (binary units; 'GiB'/'GB' read alike)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m or int(m[1]) == 0:
        raise PixdeployError(f"--workspace expects a size such as 2G or 512M, got {text!r}")
    return int(m[1]) * _UNITS[m[2]]


@main.command("build-engine")
@click.argument("bundle", type=PathArg())
@click.option("--variant", default=None, help="Precision variant to build (default: the bundle's own graphs, fp32).")
@click.option("--max-batch", type=click.IntRange(1, 1 << 16), default=4, show_default=True,
              help="Largest batch of images / sequences the engines accept.")
@click.option("--workspace", default=None, help="TensorRT workspace limit, e.g. 2G (default: TensorRT's).")
@click.option("--timing-cache", type=PathArg(), default=None,
              help="Timing cache reused across builds (default: one per GPU and TensorRT under ~/.cache/pixdeploy).")
@click.option("--version-compatible", is_flag=True,
              help="Engines that later TensorRT releases can load (they embed host code; loaders must opt in).")
@click.option("--plugins", "plugins", multiple=True, type=PathArg(),
              help="Plugin library that may claim pixdeploy::ColorFold / pixdeploy::WindowAttention (repeatable).")
@click.option("-o", "--out", type=PathArg(), default=None,
              help="Engine folder (default: BUNDLE/engines/<gpu>-trt<version>, listed in the manifest).")
@click.option("--force", is_flag=True, help="Replace an engine folder built before.")
def build_engine(bundle, variant, max_batch, workspace, timing_cache, version_compatible, plugins, out, force):
    """Build TensorRT engines from a bundle, for the GPU and TensorRT of this machine."""
    from pixdeploy.export.engine import build_engines

    folder = build_engines(bundle, variant=variant, max_batch=max_batch,
                           workspace=parse_size(workspace) if workspace else None, timing_cache=timing_cache,
                           version_compatible=version_compatible, plugins=tuple(plugins), out=out, force=force,
                           echo=lambda line: echo_line(line, err=True))
    click.echo(f"engines: {printable(folder)}")
