"""`quantize`: fp16 and int8 variants of a bundle, each gated on parity with the PyTorch fp32 model."""

from __future__ import annotations

import click

from pixdeploy.cli.app import PathArg, echo_line, image_list, main, say, say_lines


@main.command()
@click.argument("bundle", type=PathArg())
@click.option("--precision", required=True, metavar="fp16|int8", help="Precision of the new variant.")
@click.option("--target", default="tensorrt", show_default=True, metavar="tensorrt|cpu",
              help="Where int8 runs: tensorrt (symmetric Q/DQ) or cpu (the int8 scheme measured fastest on this "
                   "CPU that passes parity; recorded with the CPU's class). fp16 graphs are the same for both.")
@click.option("--calib", type=PathArg(), default=None,
              help="Folder of real images to calibrate int8 on (for cpu: its static candidate schemes); default: "
                   "sample photos shipped with scikit-learn.")
@click.option("--calib-count", type=int, default=None, help="Calibrate on this many of them, spread evenly.")
@click.option("--calib-cache", type=PathArg(), default=None,
              help="Calibration cache: reused when it exists (same ranges, nothing recomputed), written otherwise.")
@click.option("--checkpoint", type=PathArg(), default=None,
              help="The PyTorch checkpoint to check parity against; default: the one the bundle was exported from.")
@click.option("--images", "parity_images", multiple=True, type=PathArg(),
              help="Images (or folders) for the parity gate; default: real photos shipped with scikit-learn.")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True,
              help="Greedy decode steps compared with PyTorch per parity image.")
@click.option("--force", is_flag=True, help="Replace a variant the bundle already has (once the new one passes).")
def quantize(bundle, precision, target, calib, calib_count, calib_cache, checkpoint, parity_images, steps, force):
    """Add an fp16 or int8 variant to a bundle, gated on parity with the PyTorch fp32 model."""
    from pixdeploy.export.quantize import quantize_bundle

    images = image_list(parity_images) if parity_images else None
    b, result = quantize_bundle(bundle, precision, target, checkpoint=checkpoint, calib=calib, calib_count=calib_count,
                                calib_cache=calib_cache, parity_images=images, steps=steps, force=force,
                                echo=echo_line)
    say_lines(result.table())
    say(f"bundle: {b.path} (variants: {', '.join(b.variants)})")
