"""`bench`: latency of a bundle stage by stage, against PyTorch eager in the same run, and against an earlier run."""

from __future__ import annotations

import json
import math

import click

from pixdeploy.cli.app import PathArg, image_list, main, printable
from pixdeploy.errors import PixdeployError


class FiniteFloat(click.ParamType):
    """A float that is finite and at least ``minimum`` (click's FloatRange lets NaN through)."""

    name = "float"

    def __init__(self, minimum: float = 0.0):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(f) or f < self.minimum:
            self.fail(f"{value!r} must be a finite number >= {self.minimum:g}", param, ctx)
        return f


MAX_LIST_VALUE = 1 << 16  # a batch or context past this is a typo, not a measurement (and would not fit memory)


class IntList(click.ParamType):
    """Comma-separated integers within 1..MAX_LIST_VALUE ("1,8"); refused like any other bad option value."""

    name = "integers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a list of comma-separated integers", param, ctx)
        if not values or min(values) < 1 or max(values) > MAX_LIST_VALUE:
            self.fail(f"{value!r}: every value must be within 1..{MAX_LIST_VALUE}", param, ctx)
        return values


@main.command()
@click.argument("bundle", type=PathArg())
@click.option("--variant", default="fp32", show_default=True, help="Precision variant of the bundle.")
@click.option("--backend", default="onnxruntime", show_default=True,
              help="onnxruntime, tensorrt or openvino; every row of the table names it.")
@click.option("--inference-precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="OpenVINO: compute precision (default fp32; bf16 is gated against onnxruntime fp32 at load).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--plugins", "plugins", multiple=True, type=PathArg(),
              help="TensorRT: plugin library the engines were built with (repeatable; never taken from the bundle).")
@click.option("--allow-host-code", is_flag=True,
              help="TensorRT: allow version-compatible engines, which embed host code (trust their source).")
@click.option("--stage", "stages", multiple=True, type=click.Choice(["encoder", "prefill", "decode", "generate"]),
              help="Stage to time (repeatable). Default: all four.")
@click.option("--batch", "batches", type=IntList(), default="1,8", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--contexts", type=IntList(), default=None, help="Decode context lengths, comma-separated "
              "(default: 32,128,256,512 where the bundle's context holds them).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Tokens generated per call of the generate stage.")
@click.option("--iters", type=click.IntRange(min=5), default=20, show_default=True, help="Timed calls per side.")
@click.option("--warmup", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--images", "image_paths", multiple=True, type=PathArg(),
              help="Images or folders to time on (default: scikit-learn's sample photos and digits).")
@click.option("--baseline", type=PathArg(), default=None,
              help="Checkpoint the bundle came from: time PyTorch eager alongside (needs pixdeploy[train]).")
@click.option("--json", "json_out", type=PathArg(), default=None, help="Write the report here.")
@click.option("--compare", "compare_with", type=PathArg(), default=None,
              help="An earlier report: print the change and fail when a figure regressed past --margin.")
@click.option("--margin", type=FiniteFloat(0.0), default=20.0, show_default=True,
              help="Percent a figure may worsen against --compare before it counts as a regression.")
def bench(bundle, variant, backend, inference_precision, device, plugins, allow_host_code, stages, batches, contexts,
          new_tokens, iters, warmup, image_paths, baseline, json_out, compare_with, margin):
    """Time a bundle stage by stage: p50/p90/p99, throughput, peak memory; ratios to PyTorch eager with --baseline."""
    from pixdeploy.cli.run import backend_options
    from pixdeploy.files import check_not_inside, staged_file
    from pixdeploy.runtime.bench import STAGES, BenchOptions, compare, compare_table, read_report, run_bench, table

    old = read_report(compare_with) if compare_with else None  # refuse a bad file before the long part
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        raise PixdeployError(f"{json_out}: give a file path in an existing folder")
    if json_out is not None:
        check_not_inside(json_out, bundle)  # a report must not land on the bundle it measures
        if baseline is not None:
            check_not_inside(json_out, baseline)
    if baseline is not None and not baseline.exists():
        raise PixdeployError(f"{baseline}: no such checkpoint")
    options = BenchOptions(
        variant=variant, backend=backend, device=device, stages=stages or STAGES, batches=batches, contexts=contexts,
        new_tokens=new_tokens, iters=iters, warmup=warmup, images=image_list(image_paths) if image_paths else None,
        backend_options=backend_options(backend, allow_host_code, plugins, inference_precision),
    )
    report = run_bench(bundle, options, baseline=eager(baseline, device), show_progress=True)
    click.echo(table(report))
    if json_out is not None:
        with staged_file(json_out, echo=lambda m: click.echo(printable(m), err=True)) as tmp:
            tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        click.echo(printable(f"wrote {json_out}"))
    if old is not None:
        changes = compare(report, old, margin / 100)
        click.echo("\n" + printable(f"against {compare_with} ({old.get('created') or '?'}):"))
        click.echo(compare_table(changes, report, old))
        bad = [c for c in changes if c.regressed]
        if bad:
            worst = ", ".join(f"{c.label} {c.impl} {c.figure} {c.change:+.0%}" for c in bad[:3])
            raise PixdeployError(f"{len(bad)} figure(s) regressed past {margin:g}% against {compare_with}: {worst}")


def eager(checkpoint, device: str):
    """PyTorch eager as the baseline (needs torch: the [train] extra), or None without --baseline."""
    if checkpoint is None:
        return None
    from pixdeploy.eager_baseline import eager_baseline

    return eager_baseline(checkpoint, device=device)
