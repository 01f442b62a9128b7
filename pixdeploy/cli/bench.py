"""`bench`: latency of a bundle stage by stage, against PyTorch eager in the same run, and against an earlier run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from pixdeploy.cli import image_list, main
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


def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PixdeployError(f"{what} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise PixdeployError(f"{what} expects positive integers, got {text!r}")
    return values


def read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PixdeployError(f"{path}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise PixdeployError(f"{path}: not a readable bench report ({e})") from None


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--variant", default="fp32", show_default=True, help="Precision variant of the bundle.")
@click.option("--backend", default="onnxruntime", show_default=True,
              help="onnxruntime, tensorrt or openvino; every row of the table names it.")
@click.option("--inference-precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="OpenVINO: compute precision (default fp32; bf16 is gated against onnxruntime fp32 at load).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--stage", "stages", multiple=True, type=click.Choice(["encoder", "prefill", "decode", "generate"]),
              help="Stage to time (repeatable). Default: all four.")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--contexts", default=None, help="Decode context lengths, comma-separated "
              "(default: 32,128,256,512 where the bundle's context holds them).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Tokens generated per call of the generate stage.")
@click.option("--iters", type=click.IntRange(min=5), default=20, show_default=True, help="Timed calls per side.")
@click.option("--warmup", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--images", "image_paths", multiple=True, type=click.Path(path_type=Path),
              help="Images or folders to time on (default: scikit-learn's sample photos and digits).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="Checkpoint the bundle came from: time PyTorch eager alongside (needs pixdeploy[train]).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report here.")
@click.option("--compare", "compare_with", type=click.Path(path_type=Path), default=None,
              help="An earlier report: print the change and fail when a figure regressed past --margin.")
@click.option("--margin", type=FiniteFloat(0.0), default=20.0, show_default=True,
              help="Percent a figure may worsen against --compare before it counts as a regression.")
def bench(bundle, variant, backend, inference_precision, device, stages, batches, contexts, new_tokens, iters, warmup,
          image_paths, baseline, json_out, compare_with, margin):
    """Time a bundle stage by stage: p50/p90/p99, throughput, peak memory; ratios to PyTorch eager with --baseline."""
    from pixdeploy.cli.run import backend_options
    from pixdeploy.files import staged_file
    from pixdeploy.runtime.bench import STAGES, compare, compare_table, run_bench, table

    old = read_report(compare_with) if compare_with else None  # refuse a bad file before the long part
    if old is not None and (not isinstance(old, dict) or old.get("format") != "pixdeploy-bench"):
        raise PixdeployError(f"{compare_with} is not a pixdeploy bench report")
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        raise PixdeployError(f"{json_out}: give a file path in an existing folder")
    if baseline is not None and not baseline.exists():
        raise PixdeployError(f"{baseline}: no such checkpoint")
    report = run_bench(
        bundle, variant=variant, backend=backend, device=device, stages=stages or STAGES,
        batches=int_list(batches, "--batch"), contexts=int_list(contexts, "--contexts") if contexts else None,
        new_tokens=new_tokens, iters=iters, warmup=warmup,
        images=image_list(image_paths) if image_paths else None, baseline=baseline,
        show_progress=True, backend_options=backend_options(backend, False, (), inference_precision),
    )
    click.echo(table(report))
    if json_out is not None:
        with staged_file(json_out, echo=lambda m: click.echo(m, err=True)) as tmp:
            tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        click.echo(f"wrote {json_out}")
    if old is not None:
        changes = compare(report, old, margin / 100)
        click.echo(f"\nagainst {compare_with} ({old.get('created', '?')}):")
        click.echo(compare_table(changes, report, old))
        bad = [c for c in changes if c.regressed]
        if bad:
            worst = ", ".join(f"{c.label} {c.impl} {c.figure} {c.change:+.0%}" for c in bad[:3])
            raise PixdeployError(f"{len(bad)} figure(s) regressed past {margin:g}% against {compare_with}: {worst}")
