"""The `pixdeploy` command line. Every user error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pixdeploy import __version__
from pixdeploy.config import PRESETS
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


def train_options(f):
    opts = [
        click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Examples per process per micro-step."),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=6e-4, show_default=True),
        click.option("--warmup", type=click.IntRange(min=1), default=100, show_default=True),
        click.option("--eval-every", type=click.IntRange(min=1), default=200, show_default=True),
        click.option("--ckpt-every", type=click.IntRange(min=1), default=200, show_default=True),
        click.option("--workers", "num_workers", type=click.IntRange(min=0), default=2, show_default=True,
                     help="Data loader worker processes."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="auto: bf16/fp16 autocast on CUDA, fp32 on CPU."),
        click.option("--vocab-size", type=click.IntRange(min=16), default=1024, show_default=True,
                     help="BPE vocabulary when the data has text."),
        click.option("--seed", type=int, default=1337, show_default=True),
        click.option("--eval-percent", type=click.IntRange(0, 99), default=5, show_default=True,
                     help="Share of --data held out for evaluation when --eval-data is not given."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a model config field.")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="An image folder, a mixed text file, or a folder of mixed text files.")
@click.option("--eval-data", type=click.Path(path_type=Path), help="Held-out data (default: --eval-percent of --data).")
@click.option("--image-root", type=click.Path(path_type=Path), help="Where mixed text image paths start.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory (checkpoint, metrics).")
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
@train_options
def train(preset, overrides, data, eval_data, image_root, out, resume, **kw):
    """Pretrain a model (also under torchrun for several processes)."""
    from pixdeploy.config import preset as get_preset
    from pixdeploy.training import TrainConfig
    from pixdeploy.training import train as run_training

    cfg = get_preset(preset).replace(**parse_overrides(overrides))
    tc = TrainConfig(**kw)
    summary = run_training(data, out, cfg, tc, resume=resume, eval_data=eval_data, image_root=image_root)
    report_training(summary)
    _finish_distributed()


def _finish_distributed():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report_training(summary: dict) -> None:
    losses = ", ".join(f"{k} {summary[k]:.4f}" for k in ("loss", "eval_pixel_loss", "eval_word_loss") if k in summary)
    click.echo(f"step {summary.get('step', 0)}: {losses}; {summary['pixel_tokens_per_s']:,.0f} pixel tokens/s; "
               f"{summary['params']:,} parameters; {summary['processes']} process(es)")
    if summary["skipped"]:
        click.echo(f"skipped {len(summary['skipped'])} unreadable file(s):", err=True)
        for line in summary["skipped"][:10]:
            click.echo(f"  {line}", err=True)
    click.echo(f"checkpoint: {summary['checkpoint']}")


@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("pixdeploy-demo"), show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the demo's).")
@click.option("--force", is_flag=True, help="Replace an earlier demo in --workdir.")
def demo(workdir, steps, force):
    """The whole pipeline on built-in data: make a data set, train `tiny` on CPU, read held-out images."""
    from pixdeploy.demo import run_demo

    run_demo(workdir, steps=steps, force=force, echo=click.echo)


def image_list(paths) -> list[Path]:
    """Files as given; folders expanded to the images inside them."""
    from pixdeploy.data import find_images

    out = []
    for p in map(Path, paths):
        out += find_images(p) if p.is_dir() else [p]
    if not out:
        raise PixdeployError("no images given (or the folders hold none)")
    return out


@main.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--images", "parity_images", multiple=True, type=click.Path(path_type=Path),
              help="Images (or folders) for the parity gate; default: real photos shipped with scikit-learn.")
@click.option("--force", is_flag=True, help="Replace an existing bundle (only once the new one passes parity).")
def export_cmd(checkpoint, out, parity_images, force):
    """Export a checkpoint to a bundle of ONNX graphs, gated on parity with PyTorch."""
    from pixdeploy.export.bundle import export_bundle

    images = image_list(parity_images) if parity_images else None
    bundle, result = export_bundle(checkpoint, out, images=images, force=force, echo=click.echo)
    click.echo(result.table())
    click.echo(f"bundle: {bundle.path}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path))
@click.option("--images", "parity_images", multiple=True, type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True, help="Greedy decode steps.")
def parity(bundle, checkpoint, parity_images, steps):
    """Check a bundle against its PyTorch checkpoint; exit 1 if any check fails."""
    from pixdeploy.checkpoint import Checkpoint
    from pixdeploy.export.parity import check_parity, default_parity_images
    from pixdeploy.runtime import Pipeline

    pipe = Pipeline.load(bundle, device="cpu")
    model = Checkpoint(checkpoint).load_model()
    result = check_parity(model, pipe, image_list(parity_images) if parity_images else default_parity_images(),
                          steps=steps)
    click.echo(result.table())
    if not result:
        raise PixdeployError("parity failed: " + ", ".join(c.name for c in result.failures))


def runtime_options(f):
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    return click.option("--backend", default="onnxruntime", show_default=True)(f)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="Text after the image.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0)
@click.option("--seed", type=int, default=0)
@click.option("--stream", is_flag=True, help="Print tokens as they come (one image at a time).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images decoded together.")
@runtime_options
def generate(bundle, images, prompt, max_new_tokens, temperature, top_k, top_p, seed, stream, batch_size, backend,
             device):
    """Generate text for each image with the torch-free runtime."""
    from pixdeploy.runtime import Pipeline

    pipe = Pipeline.load(bundle, backend=backend, device=device)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    paths = image_list(images)
    if stream:
        for p in paths:
            click.echo(f"{p}\t", nl=False)
            for piece in pipe.stream(p, prompt, **kw):
                click.echo(piece, nl=False)
            click.echo()
    else:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            for p, text in zip(chunk, pipe.generate_batch(chunk, prompt, **kw)):
                click.echo(f"{p}\t{text}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help=".npy or .safetensors file.")
@runtime_options
def embed(bundle, images, out, backend, device):
    """Window embeddings (images, windows, dim) of images, saved to .npy or .safetensors."""
    import os

    import numpy as np

    from pixdeploy.runtime import Pipeline

    if out.suffix not in (".npy", ".safetensors"):
        raise PixdeployError(f"--out must end in .npy or .safetensors, got {out.name}")
    paths = image_list(images)
    vectors = Pipeline.load(bundle, backend=backend, device=device).embed(paths)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
    else:
        from safetensors.numpy import save_file

        save_file({"window_embeddings": vectors}, str(tmp), metadata={"images": "\n".join(map(str, paths))})
    os.replace(tmp, out)
    click.echo(f"{out}: {vectors.shape[0]} images x {vectors.shape[1]} windows x {vectors.shape[2]}")


def describe_custom_ops(path: Path) -> list[str]:
    """One line per custom-domain op in a graph, and whether it carries its function body."""
    from collections import Counter

    try:
        import onnx
    except ImportError:  # a runtime-only install (e.g. a Jetson) need not have onnx
        return ["custom ops: not listed (pip install onnx to list them)"]
    proto = onnx.load(str(path), load_external_data=False)
    custom = Counter((n.domain, n.op_type) for n in proto.graph.node if n.domain not in ("", "ai.onnx"))
    bodies = {(f.domain, f.name) for f in proto.functions}
    return [f"custom op {domain}::{op} x{count}, "
            + ("with its function body" if (domain, op) in bodies else "WITHOUT a function body")
            for (domain, op), count in custom.items()]


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def inspect(bundle):
    """Show a bundle's manifest, graphs, custom ops, sizes and opset."""
    from pixdeploy.runtime import Bundle

    b = Bundle(bundle)
    m = b.manifest
    cfg = b.config
    click.echo(f"{b.path}: {m['format']} v{m['format_version']}, {m['producer']}, precision {m['precision']}")
    click.echo(f"model: dim {cfg.dim}, {cfg.image_layers} image + {cfg.n_layers} decoder layers, "
               f"image {cfg.image_size} window {cfg.window} fold {cfg.fold} ({cfg.n_colors} colours), "
               f"text vocab {cfg.text_vocab}, context {cfg.max_seq_len}")
    click.echo(f"onnx: opset {m['onnx']['opset']}, IR {m['onnx']['ir_version']}")
    for name, g in b.graphs.items():
        size = b.graph_path(name).stat().st_size
        click.echo(f"  {g['file']} ({size / 1e6:.1f} MB): {g['purpose']}")
        for kind in ("inputs", "outputs"):
            tensors = g[kind]
            cache = [k for k in tensors if k.startswith(("past_", "present_"))]
            sig = [f"{k} {v['dtype']}{v['shape']}" for k, v in tensors.items() if k not in cache]
            if cache:
                v = tensors[cache[0]]
                sig.append(f"{len(cache)} KV-cache tensors {v['dtype']}{v['shape']}")
            click.echo(f"    {kind}: {', '.join(sig)}")
        for line in describe_custom_ops(b.graph_path(name)):
            click.echo(f"    {line}")
    parity = json.loads(b.file("parity.json").read_text()) if b.file("parity.json").is_file() else None
    if parity:
        click.echo(f"parity ({parity['precision']}): {'passed' if parity['passed'] else 'FAILED'}")
        for c in parity["checks"]:
            click.echo(f"    {c['name']}: {c['value']:.3g}")


if __name__ == "__main__":
    main()
