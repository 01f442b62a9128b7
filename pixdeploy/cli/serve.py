"""`triton` and `serve`: a bundle as a Triton Inference Server model repository, or as a running server."""

from __future__ import annotations

import math
import shutil
import signal
import sys

import click

from pixdeploy.cli.app import PathArg, main, say
from pixdeploy.errors import PixdeployError


@main.command()
@click.argument("bundle", type=PathArg())
@click.option("-o", "--out", required=True, type=PathArg(), help="Model repository folder.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default="onnxruntime",
              show_default=True, help="What runs the graphs: Triton's onnxruntime or TensorRT backend, or "
              "onnxruntime inside Python-backend models (CPU-only Triton).")
@click.option("--max-batch", type=click.IntRange(1, 1 << 16), default=None,
              help="Largest dynamic batch of the encoder and of pixdeploy_generate (default 8; with --backend "
              "tensorrt, the engines' own).")
@click.option("--instances", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Model instances of each model (GPU instances for onnxruntime/tensorrt).")
@click.option("--variant", default="fp32", show_default=True,
              help="Precision variant whose graphs or engines to serve.")
@click.option("--engines", default=None,
              help="With --backend tensorrt: the engine set (folder under engines/) when the variant has several.")
@click.option("--force", is_flag=True, help="Replace an existing repository written by pixdeploy.")
def triton(bundle, out, backend, max_batch, instances, variant, engines, force):
    """Write a Triton model repository for a bundle."""
    from pixdeploy.export.triton import RepositoryOptions, write_repository

    options = RepositoryOptions(backend=backend, max_batch=max_batch, instances=instances, variant=variant,
                                engines=engines, force=force)
    write_repository(bundle, out, options, echo=lambda m: say(m, err=True))
    say(f"{out}: Triton model repository (image_encoder, decoder, pixdeploy [streaming], "
        f"pixdeploy_generate), backend {backend}, variant {variant}")


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):  # FloatRange lets NaN through (every comparison with NaN is false)
        raise click.BadParameter(f"{name} must be a finite number")
    return value


def _interrupt(*_):
    """SIGTERM (a service manager's stop) takes the same clean path as Ctrl-C."""
    raise KeyboardInterrupt


@main.command()
@click.argument("bundle", type=PathArg())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--repository", type=PathArg(), default=None,
              help="Keep the model repository here (reused by the next start); default: a temporary folder.")
@click.option("--instances", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=1, max=3600), default=180, show_default=True,
              callback=lambda _ctx, _p, v: _finite(v, "--timeout"),
              help="Seconds to wait for the server to become ready.")
def serve(bundle, host, port, grpc_port, repository, instances, max_batch, timeout):
    """Serve a bundle with Triton Inference Server (CPU; needs pixdeploy[serve]) until Ctrl-C."""
    from pixdeploy.export.triton import repository_for
    from pixdeploy.files import marked_temp_dir, sweep_marked_temp_dirs
    from pixdeploy.runtime.serve import REPOSITORY_TEMP, TritonServer, triton_dist

    triton_dist()  # refuse before writing anything when the server is not installed
    echo = lambda m: say(m, err=True)  # noqa: E731
    sweep_marked_temp_dirs(echo)  # what a pixdeploy killed with -9 left
    tmp = None if repository else marked_temp_dir(REPOSITORY_TEMP)
    try:
        repo = repository_for(bundle, repository or tmp / "repository", instances=instances,
                              max_batch=max_batch, echo=echo)
        signal.signal(signal.SIGTERM, _interrupt)
        with TritonServer(repo, host=host, http_port=port, grpc_port=grpc_port, log=sys.stderr) as server:
            echo(f"starting Triton on {repo}")
            try:  # Ctrl-C at any moment from here (even while the lines below print) says what happens next
                server.wait_ready(timeout)
                say(f"ready: HTTP http://{server.http_url}  gRPC {server.grpc_url}")
                say(f"  POST http://{server.http_url}/v2/models/pixdeploy_generate/infer   (one answer)")
                say(f"  gRPC {server.grpc_url}, bidirectional stream to model pixdeploy   (text as it comes)")
                say("Ctrl-C stops the server", err=True)
                code = server.process.wait()
            except KeyboardInterrupt:
                echo("stopping Triton")
                raise
            raise PixdeployError(f"Triton server exited unexpectedly (code {code})")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
