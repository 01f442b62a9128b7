"""`generate` and `embed`: the torch-free runtime on a bundle."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import click

from pixdeploy.cli import FiniteFloat, image_list, main, printable
from pixdeploy.errors import ContextLimitWarning, PixdeployError


def variant_option(f):
    return click.option("--variant", default="fp32", show_default=True,
                        help="Which of the bundle's variants runs (fp32, fp16, int8-tensorrt, int8-cpu).")(f)


def runtime_options(f):
    f = variant_option(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    return click.option("--backend", default="onnxruntime", show_default=True)(f)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="Text after the image.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--temperature", type=FiniteFloat(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0)
@click.option("--top-p", type=FiniteFloat(min=0, max=1, min_open=True), default=1.0)
@click.option("--seed", type=int, default=0)
@click.option("--stream", is_flag=True, help="Print tokens as they come (one image at a time).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images decoded together.")
@runtime_options
def generate(bundle, images, prompt, max_new_tokens, temperature, top_k, top_p, seed, stream, batch_size, backend,
             device, variant):
    """Generate text for each image with the torch-free runtime."""
    from pixdeploy.runtime import Pipeline

    pipe = Pipeline.load(bundle, backend=backend, device=device, variant=variant)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    paths = image_list(images, read=stream)  # streamed output starts at once: a bad image must fail first
    with warnings_as_lines():
        _generate(pipe, paths, prompt, kw, stream, batch_size)


@contextmanager
def warnings_as_lines():
    """The runtime's warnings (e.g. the context cutting generation short) as one stderr line each."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ContextLimitWarning)
            yield
    finally:
        for message in dict.fromkeys(str(w.message) for w in caught if w.category is ContextLimitWarning):
            click.echo(f"warning: {message}", err=True)
        for w in caught:  # anything else is shown as Python would have shown it
            if w.category is not ContextLimitWarning:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _generate(pipe, paths, prompt, kw, stream, batch_size):
    if stream:
        for p in paths:
            click.echo(f"{printable(p)}\t", nl=False)
            for piece in pipe.stream(p, prompt, **kw):  # the bundle's tokenizer decides what text is
                click.echo(printable(piece), nl=False)
            click.echo()
    else:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            for p, text in zip(chunk, pipe.generate_batch(chunk, prompt, **kw)):
                click.echo(f"{printable(p)}\t{printable(text)}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help=".npy or .safetensors file.")
@runtime_options
def embed(bundle, images, out, backend, device, variant):
    """Window embeddings (images, windows, dim) of images, saved to .npy or .safetensors."""
    import numpy as np

    from pixdeploy.files import check_file_target, staged_file
    from pixdeploy.runtime import Pipeline

    if out.suffix not in (".npy", ".safetensors"):
        raise PixdeployError(f"--out must end in .npy or .safetensors, got {out.name}")
    check_file_target(out)  # before the work, not after it
    paths = image_list(images)
    vectors = Pipeline.load(bundle, backend=backend, device=device, variant=variant).embed(paths)
    with staged_file(out, echo=click.echo) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors, allow_pickle=False)
        else:
            from safetensors.numpy import save_file

            save_file({"window_embeddings": vectors}, str(tmp), metadata={"images": "\n".join(map(str, paths))})
    click.echo(printable(f"{out}: {vectors.shape[0]} images x {vectors.shape[1]} windows x {vectors.shape[2]}"))


