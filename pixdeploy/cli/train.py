"""`train` and `demo`."""

from __future__ import annotations

from pathlib import Path

import click

from pixdeploy.cli.app import FiniteFloat, PathArg, main, parse_overrides, say
from pixdeploy.config import LIMITS, PRESETS
from pixdeploy.machine import usable_cpus

# What the arithmetic survives: the weighted loss and its gradients stay within fp16's range (65504) under fp16
# autocast, with a word loss of up to ln(2**21) ~ 15 nats; AdamW moves each weight by about lr a step, so an lr
# past 1 moves weights by more than their own scale (the run diverges; a non-finite loss stops it anyway).
MAX_WORD_LOSS_WEIGHT = 1000.0
MAX_LR = 1.0


def _workers_bound(ctx, param, value):
    """--workers forks that many loader processes: at most the CPUs this process may use."""
    cpus = usable_cpus()
    if value is not None and value > cpus:
        raise click.BadParameter(f"{value} is more than the {cpus} CPU(s) this process may use; each worker is a "
                                 f"process (at most {cpus})", ctx, param)
    return value


def train_options(f):
    opts = [
        click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Examples per process per micro-step."),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--lr", type=FiniteFloat(min=0, max=MAX_LR, min_open=True), default=6e-4, show_default=True),
        click.option("--warmup", type=click.IntRange(min=1), default=100, show_default=True),
        click.option("--eval-every", type=click.IntRange(min=1), default=200, show_default=True),
        click.option("--ckpt-every", type=click.IntRange(min=1), default=200, show_default=True),
        click.option("--workers", "num_workers", type=click.IntRange(min=0), default=min(2, usable_cpus()),
                     show_default=True, callback=_workers_bound,
                     help="Data loader worker processes (at most this machine's CPUs)."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="auto: bf16/fp16 autocast on CUDA, fp32 on CPU."),
        click.option("--vocab-size", type=click.IntRange(16, LIMITS["text_vocab"]), default=1024, show_default=True,
                     help="BPE vocabulary when the data has text."),
        click.option("--word-loss-weight", type=FiniteFloat(min=0, max=MAX_WORD_LOSS_WEIGHT, min_open=True),
                     default=1.0, show_default=True,
                     help="Weight of each word target against one pixel target in the loss (1: the paper's)."),
        click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1337, show_default=True),
        click.option("--eval-percent", type=click.IntRange(0, 99), default=5, show_default=True,
                     help="Share of --data held out for evaluation when --eval-data is not given."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a model config field.")
@click.option("--data", required=True, type=PathArg(),
              help="An image folder, a mixed text file, or a folder of mixed text files.")
@click.option("--eval-data", type=PathArg(), help="Held-out data (default: --eval-percent of --data).")
@click.option("--image-root", type=PathArg(), help="Where mixed text image paths start.")
@click.option("--allow-outside-image-root", "allow_outside_root", is_flag=True,
              help="Read mixed-text image paths that leave the image root (../x.png, absolute paths).")
@click.option("--data-kind", type=click.Choice(["auto", "images", "mixed"]), default="auto", show_default=True,
              help="How to read a --data folder: auto refuses a folder that could be either.")
@click.option("--out", required=True, type=PathArg(),
              help="Run directory (checkpoint, metrics); new or empty unless --resume.")
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
@train_options
def train(preset, overrides, data, eval_data, image_root, allow_outside_root, data_kind, out, resume, **kw):
    """Pretrain a model (also under torchrun for several processes)."""
    from pixdeploy.config import preset as get_preset
    from pixdeploy.training import RunOptions, TrainConfig
    from pixdeploy.training import train as run_training

    cfg = get_preset(preset).replace(**parse_overrides(overrides))
    options = RunOptions(resume=resume, eval_data=eval_data, image_root=image_root, data_kind=data_kind,
                         allow_outside_root=allow_outside_root, echo=lambda line: say(line, err=True))
    summary = run_training(data, out, cfg, TrainConfig(**kw), options)
    report_training(summary)
    _finish_distributed()


def _finish_distributed():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report_training(summary: dict) -> None:
    losses = ", ".join(f"{k} {summary[k]:.4f}" for k in ("loss", "eval_pixel_loss", "eval_word_loss") if k in summary)
    if summary.get("already_complete"):
        say(f"run already complete at step {summary['step']} (--steps {summary['steps_asked']}): nothing "
            f"to train; pass a larger --steps to continue it")
        say(f"step {summary['step']}: {losses}; {summary['params']:,} parameters")
        say(f"checkpoint: {summary['checkpoint']}")
        return
    say(f"step {summary.get('step', 0)}: {losses}; {summary['pixel_tokens_per_s']:,.0f} pixel tokens/s; "
        f"{summary['params']:,} parameters; {summary['processes']} process(es)")
    if summary["skipped"]:
        say(f"skipped {len(summary['skipped'])} unreadable file(s) or unusable line(s):", err=True)
        for line in summary["skipped"][:10]:
            say(f"  {line}", err=True)  # file names and lines of the data
        if len(summary["skipped"]) > 10:  # counted in full, listed in part
            say(f"  ... and {len(summary['skipped']) - 10} more", err=True)
    say(f"checkpoint: {summary['checkpoint']}")


@main.command()
@click.option("--workdir", type=PathArg(), default=Path("pixdeploy-demo"), show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the demo's).")
@click.option("--force", is_flag=True, help="Replace an earlier demo in --workdir.")
def demo(workdir, steps, force):
    """The whole pipeline on built-in data: train `tiny` on CPU, read held-out images, export, quantize."""
    from pixdeploy.demo import run_demo

    run_demo(workdir, steps=steps, force=force, echo=say)


