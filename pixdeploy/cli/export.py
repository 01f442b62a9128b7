"""`export` and `parity`: PyTorch checkpoint -> bundle, and the check between them."""

from __future__ import annotations

import click

from pixdeploy.cli.app import PathArg, echo_line, image_list, main, say, say_lines
from pixdeploy.errors import PixdeployError
from pixdeploy.export.profiles import DEFAULT_PROFILE, PROFILES  # plain data: no torch or onnx


@main.command("export")
@click.argument("checkpoint", type=PathArg())
@click.option("-o", "--out", required=True, type=PathArg(), help="Bundle directory to write.")
@click.option("--images", "parity_images", multiple=True, type=PathArg(),
              help="Images (or folders) for the parity gate; default: real photos shipped with scikit-learn.")
@click.option("--force", is_flag=True, help="Replace an existing bundle (only once the new one passes parity).")
@click.option("--target", type=click.Choice(list(PROFILES)), default=DEFAULT_PROFILE, show_default=True,
              help="Operators the graphs may use: tensorrt-10.3 for JetPack 6.1/6.2 / TensorRT 10.3-10.14, "
              "tensorrt-10.15 for TensorRT 10.15+ and 11.x.")
def export_cmd(checkpoint, out, parity_images, force, target):
    """Export a checkpoint to a bundle of ONNX graphs, gated on parity with PyTorch."""
    from pixdeploy.export.bundle import export_bundle

    images = image_list(parity_images, read=True) if parity_images else None
    bundle, result = export_bundle(checkpoint, out, images=images, force=force, echo=echo_line, target=target)
    say_lines(result.table())
    say(f"bundle: {bundle.path}")


@main.command()
@click.argument("bundle", type=PathArg())
@click.option("--checkpoint", required=True, type=PathArg())
@click.option("--images", "parity_images", multiple=True, type=PathArg())
@click.option("--steps", type=click.IntRange(1, 1 << 16), default=32, show_default=True, help="Greedy decode steps.")
@click.option("--variant", default="fp32", show_default=True,
              help="Which variant to check, against its precision's limits.")
def parity(bundle, checkpoint, parity_images, steps, variant):
    """Check a bundle against its PyTorch checkpoint; exit 1 if any check fails."""
    from pixdeploy.checkpoint import Checkpoint
    from pixdeploy.export.parity import check_parity, default_parity_images
    from pixdeploy.runtime import Pipeline

    images = image_list(parity_images, read=True) if parity_images else default_parity_images()
    pipe = Pipeline.load(bundle, device="cpu", variant=variant)
    ck = Checkpoint(checkpoint)
    if ck.config.to_dict() != pipe.cfg.to_dict():  # another model: its parity says nothing; say so
        raise PixdeployError(f"checkpoint {checkpoint} is not the model of bundle {bundle} (configs differ); "
                             "give the checkpoint the bundle was exported from")
    model = ck.load_model()
    result = check_parity(model, pipe, images, precision=pipe.bundle.variant(variant).precision, steps=steps)
    say_lines(result.table())
    if not result:
        raise PixdeployError("parity failed: " + ", ".join(c.name for c in result.failures))


