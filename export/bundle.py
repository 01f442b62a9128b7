"""Checkpoint -> bundle directory, written atomically and gated on parity.

Everything is written into a temporary sibling directory; the parity gate runs on that directory
through the torch-free runtime; only a bundle that passes is renamed into place. An interrupted or
failed export never leaves a bundle that loads.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from pixdeploy.export.onnx_export import IR_VERSION, OPSET, export_graph, graph_specs
from pixdeploy.export.ops import DOMAIN
from pixdeploy.export.parity import ParityError, check_parity, default_parity_images
from pixdeploy.export.profiles import DEFAULT_PROFILE, get_profile
from pixdeploy.runtime.bundle import (
    EMBEDDINGS,
    PARITY_REPORT,
    TOKENIZER,
    Bundle,
    Provenance,
    SourceRecord,
    commit_manifest,
    is_bundle_dir,
    new_manifest,
    with_parity,
    write_new_manifest,
)
from pixdeploy.runtime.pipeline import Pipeline

from pixdeploy import __version__
from pixdeploy.checkpoint import Checkpoint
from pixdeploy.errors import PixdeployError
from pixdeploy.files import check_not_inside, check_replaceable, locked_dir, staged_dir, writing

PRODUCER = f"pixdeploy {__version__}"


def write_manifest(path: Path, cfg, extra: dict) -> None:
    """A fresh manifest for the bundle files in ``path`` (the format module writes it); ``extra``: what the
    exporter records (source, export profile, onnx; ``parity``: the fp32 variant's parity record)."""
    recorded = {"onnx": onnx_record(OPSET, IR_VERSION), **extra}
    write_new_manifest(path, cfg, {s.name: s.to_dict() for s in graph_specs(cfg)}, recorded, producer=PRODUCER)


def onnx_record(opset: int, ir_version: int) -> dict:
    """What the manifest says of the graphs' ONNX (descriptive: the graphs themselves are what runs)."""
    return {"opset": opset, "ir_version": ir_version, "custom_domain": DOMAIN}


def check_fits_tensorrt(proto, graph: str, profile) -> None:
    """A TensorRT profile's graphs must fit the operator table of the oldest TensorRT it claims."""
    if profile.tensorrt_min is None:
        return
    from pixdeploy.export.trt_support import unsupported

    problems = unsupported(proto, profile.tensorrt_min)
    if problems:
        raise PixdeployError(f"{graph}.onnx does not fit TensorRT {profile.tensorrt_min} (--target {profile.name}): "
                             + "; ".join(problems))


def export_bundle(checkpoint, out, images: list | None = None, force: bool = False, echo=print,
                  target: str = DEFAULT_PROFILE):
    """Export, check parity, and move into place. Returns (Bundle, ParityResult).

    ``target`` is the export profile (`pixdeploy.export.profiles`): which operators the graphs may use."""
    profile = get_profile(target)
    ck = Checkpoint(checkpoint)
    out = Path(out)
    check_not_inside(out, ck.path)  # a resumed run replaces its checkpoint folder, bundle and all
    check_replaceable(out, replace=force, what="pixdeploy bundle", is_replaceable=is_bundle_dir)
    model = ck.load_model()
    cfg = ck.config
    with contextlib.ExitStack() as held, writing(out):  # a full disk names the bundle, not a temporary
        if out.is_dir():  # --force over a bundle: wait for a quantize or build-engine changing it to finish
            held.enter_context(locked_dir(out, echo))
        bundle, result = _export_into(out, ck, model, cfg, profile, target, images, force, echo)
    return bundle, result


def _export_into(out: Path, ck, model, cfg, profile, target: str, images, force: bool, echo):
    """Write the graphs and tables, gate them through the runtime on a manifest held in memory, then write the
    manifest once, with the parity record, and move the bundle into place. Every file is hashed once."""
    with staged_dir(out, replace=force, what="pixdeploy bundle", is_replaceable=is_bundle_dir, echo=echo) as tmp:
        for spec in graph_specs(cfg):
            echo(f"exporting {spec.name}.onnx" + (f" for {profile.name}" if target != DEFAULT_PROFILE else ""))
            proto = export_graph(model, spec, tmp / f"{spec.name}.onnx", profile)
            check_fits_tensorrt(proto, spec.name, profile)
        np.save(tmp / EMBEDDINGS, model.tok_emb.weight.detach().float().numpy(), allow_pickle=False)
        ck.tokenizer.save(tmp / TOKENIZER)
        # Absolute: the path the user typed may be relative to a folder a later command does not run from (a
        # relative path in an older bundle is read relative to the bundle: Bundle.source_checkpoint).
        provenance = Provenance(PRODUCER, SourceRecord(os.path.abspath(ck.path), ck.step), profile.to_dict(),
                                onnx_record(profile.opset, profile.ir_version))
        manifest, hashed = new_manifest(tmp, cfg, {s.name: s.to_dict() for s in graph_specs(cfg)}, provenance)

        echo("checking parity against PyTorch")
        with Pipeline.open(Bundle.from_manifest(tmp, manifest, hashed=hashed), device="cpu") as pipeline:
            result = check_parity(model, pipeline, images or default_parity_images())
        report = json.dumps(result.to_dict(), indent=2)
        if not result:
            failed = out.parent / f"{out.name}.parity-failed.json"
            failed.write_text(report, encoding="utf-8")
            names = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
            raise ParityError(f"parity gate failed ({names}); no bundle written; details in {failed}")
        (tmp / PARITY_REPORT).write_text(report, encoding="utf-8")
        manifest = with_parity(tmp, manifest, result.record())
        commit_manifest(tmp, manifest)
        hashed = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    return Bundle.from_manifest(out, manifest, hashed=hashed), result
