"""`build-engine`: a bundle's graphs -> TensorRT engines for this GPU (a thin layer over `pixdeploy.export.engine`)."""

from __future__ import annotations

import json
import re

import click

from pixdeploy.cli.app import PathArg, echo_line, main, say
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
@click.option("--variant", default=None,
              help="Precision variant to build (default: the bundle's own graphs, fp32; with --check: every "
              "variant meant for TensorRT).")
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
@click.option("--check", is_flag=True,
              help="No GPU needed: parse and build each graph with NVIDIA's ONNX parser and TensorRT builder on "
              "the CPU (TensorRT for RTX) and report, per graph, whether they accept it and why not. Writes no "
              "engine. Also run by a plain build-engine where TensorRT or a GPU is missing.")
@click.option("--compute-capability", "compute_capabilities", multiple=True,
              help="With --check: target GPU generation, e.g. 8.6 (repeatable; default 8.0 8.6 8.9).")
@click.option("--json", "json_out", type=PathArg(), default=None, help="With --check: write the verdicts here.")
def build_engine(bundle, variant, max_batch, workspace, timing_cache, version_compatible, plugins, out, force,
                 check, compute_capabilities, json_out):
    """Build TensorRT engines from a bundle, for the GPU and TensorRT of this machine (or, with --check, ask
    NVIDIA's parser and builder about every graph on a machine without a GPU)."""
    from pixdeploy.export.engine import EngineBuildOptions, NoTensorRT, build_engines

    if (compute_capabilities or json_out) and not check:
        raise PixdeployError("--compute-capability and --json are for --check")
    if check:
        _check(bundle, variant, max_batch, compute_capabilities, json_out)
        return
    options = EngineBuildOptions(variant=variant, max_batch=max_batch,
                                 workspace=parse_size(workspace) if workspace else None, timing_cache=timing_cache,
                                 version_compatible=version_compatible, plugins=tuple(plugins), out=out, force=force)
    try:
        folder = build_engines(bundle, options, echo=lambda line: echo_line(line, err=True))
    except NoTensorRT as e:
        _verdict_instead(bundle, variant, max_batch)
        raise PixdeployError(f"no engine was built for {bundle}: {e}") from None
    say(f"engines: {folder}")


class Refused(PixdeployError):
    """NVIDIA's parser or builder refused a graph (the verdict lines say which)."""


def _verdict_instead(bundle, variant, max_batch) -> None:
    """Where no engine can be built, NVIDIA's verdict on the graphs, when it can be had: only for a bundle meant
    for TensorRT, with TensorRT for RTX installed; otherwise the build's own reason is the one line shown."""
    from pixdeploy.export import nvidia_check

    if not nvidia_check.available():
        return
    said = []

    def echo(line):
        if not said:
            echo_line("no engine can be built here; NVIDIA's parser and builder on the CPU say:", err=True)
            said.append(True)
        say(line)

    try:
        _check(bundle, variant, max_batch, (), None, echo)
    except Refused:
        pass
    except PixdeployError:  # not a bundle for TensorRT, or not one at all: the build's own reason stands
        if said:
            raise


def _check(bundle, variant, max_batch, compute_capabilities, json_out, echo=say) -> None:
    """NVIDIA's verdict per graph; exit 1 when any graph is refused."""
    from pixdeploy.export.nvidia_check import COMPUTE_CAPABILITIES, check_bundle, parse_compute_capability
    from pixdeploy.files import check_file_target, check_not_inside, staged_file

    ccs = [parse_compute_capability(c) for c in compute_capabilities] or COMPUTE_CAPABILITIES
    if json_out is not None:  # refused before the long part: a path inside the bundle, a folder, no parent
        check_not_inside(json_out, bundle)
        check_file_target(json_out)
    report = check_bundle(bundle, [variant] if variant else None, max_batch=max_batch, compute_capabilities=ccs,
                          echo=echo)
    if json_out is not None:
        with staged_file(json_out, echo=lambda m: echo_line(m, err=True)) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    refused = [v for v in report.verdicts if not v.accepted]
    if refused:
        raise Refused(f"NVIDIA's parser or builder refused {len(refused)} of {len(report.verdicts)} graphs "
                      f"(listed above; TensorRT for RTX {report.tensorrt_rtx})")
    echo(f"all {len(report.verdicts)} graphs parse and build (TensorRT for RTX {report.tensorrt_rtx}); "
         "no engine was written")
