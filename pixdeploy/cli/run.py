"""`generate` and `embed`: the torch-free runtime on a bundle."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager

import click

from pixdeploy.cli.app import FiniteFloat, PathArg, image_list, main, say
from pixdeploy.errors import ContextLimitWarning, CpuClassWarning, PixdeployError


def variant_option(f):
    return click.option("--variant", default="fp32", show_default=True,
                        help="Which of the bundle's variants runs (fp32, fp16, int8-tensorrt, int8-cpu).")(f)


def runtime_options(f):
    """--variant, --device, --backend, the TensorRT backend's two opt-ins and OpenVINO's precision, passed to
    `Pipeline.load`."""
    f = variant_option(f)
    f = click.option("--inference-precision", type=click.Choice(["fp32", "bf16"]), default=None,
                     help="OpenVINO: compute precision (default fp32; bf16 needs a CPU with native bf16 and is "
                     "gated against onnxruntime fp32 when it loads).")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    f = click.option("--plugins", "plugins", multiple=True, type=PathArg(),
                     help="TensorRT: plugin library the engines were built with (repeatable; never taken from "
                     "the bundle).")(f)
    f = click.option("--allow-host-code", is_flag=True,
                     help="TensorRT: allow version-compatible engines, which embed host code (trust their source).")(f)
    return click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "openvino"]),
                        default="onnxruntime", show_default=True)(f)


def backend_options(backend: str, allow_host_code: bool, plugins: tuple,
                    inference_precision: str | None = None) -> dict:
    """The opt-ins `Pipeline.load` takes for ``backend``; another backend's options are refused."""
    if backend != "tensorrt" and (allow_host_code or plugins):
        raise PixdeployError("--allow-host-code and --plugins are for --backend tensorrt")
    if backend != "openvino" and inference_precision is not None:
        raise PixdeployError("--inference-precision is for --backend openvino")
    if backend == "tensorrt":
        return {"allow_host_code": allow_host_code, "plugins": tuple(plugins)}
    if backend == "openvino":
        return {"precision": inference_precision or "fp32"}
    return {}


@main.command()
@click.argument("bundle", type=PathArg())
@click.argument("images", nargs=-1, required=True, type=PathArg())
@click.option("--prompt", default="", help="Text after the image.")
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=32, show_default=True)
@click.option("--temperature", type=FiniteFloat(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-k", type=click.IntRange(0, 1 << 24), default=0)
@click.option("--top-p", type=FiniteFloat(min=0, max=1, min_open=True), default=1.0)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, help="Sampling seed.")
@click.option("--stream", is_flag=True, help="Print tokens as they come (one image at a time).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Images decoded together.")
@runtime_options
def generate(bundle, images, prompt, max_new_tokens, temperature, top_k, top_p, seed, stream, batch_size, backend,
             allow_host_code, plugins, inference_precision, device, variant):
    """Generate text for each image with the torch-free runtime."""
    from pixdeploy.runtime import Pipeline
    from pixdeploy.text import utf8_problem

    if utf8_problem(prompt):  # refused where it was typed, before anything loads
        raise PixdeployError(f"--prompt {utf8_problem(prompt)}")
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    with warnings_as_lines(), Pipeline.load(bundle, backend=backend, device=device, variant=variant,
                                            **backend_options(backend, allow_host_code, plugins,
                                                              inference_precision)) as pipe:
        paths = image_list(images, read=stream)  # streamed output starts at once: a bad image must fail first
        from pixdeploy.machine import check_memory

        together = 1 if stream else min(batch_size, len(paths))
        check_memory(together * pipe.cfg.inference_bytes_per_image(), f"--batch-size {together}",
                     "lower --batch-size")
        _generate(pipe, paths, prompt, kw, stream, batch_size)


ONE_LINE_WARNINGS = (ContextLimitWarning, CpuClassWarning)


@contextmanager
def warnings_as_lines():
    """The runtime's warnings (e.g. the context cutting generation short) as one stderr line each."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            for category in ONE_LINE_WARNINGS:
                warnings.simplefilter("always", category)
            yield
    finally:
        for message in dict.fromkeys(str(w.message) for w in caught if w.category in ONE_LINE_WARNINGS):
            say(f"warning: {message}", err=True)
        for w in caught:  # anything else is shown as Python would have shown it
            if w.category not in ONE_LINE_WARNINGS:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _generate(pipe, paths, prompt, kw, stream, batch_size):
    if stream:
        for p in paths:
            say(p, "", sep="\t", nl=False)
            for piece in pipe.stream(p, prompt, **kw):
                say(piece, nl=False)
            say()
    else:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            for p, text in zip(chunk, pipe.generate_batch(chunk, prompt, **kw)):
                say(p, text, sep="\t")


@main.command()
@click.argument("bundle", type=PathArg())
@click.argument("images", nargs=-1, required=True, type=PathArg())
@click.option("-o", "--out", required=True, type=PathArg(), help=".npy or .safetensors file.")
@runtime_options
def embed(bundle, images, out, backend, allow_host_code, plugins, inference_precision, device, variant):
    """Window embeddings (images, windows, dim) of images, saved to .npy or .safetensors."""
    import numpy as np

    from pixdeploy.files import check_file_target, check_not_inside, staged_file
    from pixdeploy.runtime import Pipeline

    if out.suffix not in (".npy", ".safetensors"):
        raise PixdeployError(f"--out must end in .npy or .safetensors, got {out.name}")
    check_file_target(out)  # before the work, not after it
    check_not_inside(out, bundle)  # the embeddings must not land on the bundle they come from
    paths = image_list(images)
    with warnings_as_lines(), Pipeline.load(bundle, backend=backend, device=device, variant=variant,
                                            **backend_options(backend, allow_host_code, plugins,
                                                              inference_precision)) as pipe:
        from pixdeploy.machine import check_memory

        # every image is embedded in one batch: refused before any is read when they cannot fit together
        check_memory(len(paths) * pipe.cfg.inference_bytes_per_image(), f"embedding {len(paths)} images",
                     "embed fewer images at a time")
        vectors = pipe.embed(paths)
    with staged_file(out, echo=say) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors, allow_pickle=False)
        else:
            from safetensors.numpy import save_file

            # The image paths as a JSON list: ASCII with \\u escapes, so a name that is not UTF-8 (its bytes kept
            # as surrogate escapes, which os.fsencode turns back into the bytes) or that holds a newline survives.
            save_file({"window_embeddings": vectors}, str(tmp), metadata={"images": json.dumps(list(map(str, paths)))})
    say(f"{out}: {vectors.shape[0]} images x {vectors.shape[1]} windows x {vectors.shape[2]}")


