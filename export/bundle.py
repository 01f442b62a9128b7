"""Checkpoint -> bundle directory, written atomically and gated on parity.

Everything is written into a temporary sibling directory; the parity gate runs on that directory
through the torch-free runtime; only a bundle that passes is renamed into place. An interrupted or
failed export never leaves a bundle that loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from pixdeploy.export.onnx_export import IR_VERSION, OPSET, export_graph, graph_specs
from pixdeploy.export.ops import DOMAIN
from pixdeploy.export.parity import ParityError, check_parity, default_parity_images
from pixdeploy.runtime.bundle import FORMAT, FORMAT_VERSION, Bundle
from pixdeploy.runtime.pipeline import Pipeline

from pixdeploy import __version__
from pixdeploy.checkpoint import Checkpoint
from pixdeploy.config import SPECIAL_TOKENS
from pixdeploy.errors import PixdeployError
from pixdeploy.files import replace_dir, sha256


def write_manifest(path: Path, cfg, extra: dict) -> None:
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(path.iterdir()) if p.name != "manifest.json"}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "producer": f"pixdeploy {__version__}",
        "precision": "fp32", "config": cfg.to_dict(),
        "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)},
        "onnx": {"opset": OPSET, "ir_version": IR_VERSION, "custom_domain": DOMAIN},
        "graphs": {s.name: s.to_dict() for s in graph_specs(cfg)},
        **extra, "files": files,
    }
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, path / "manifest.json")


def export_bundle(checkpoint, out, images: list | None = None, force: bool = False, echo=print):
    """Export, check parity, and move into place. Returns (Bundle, ParityResult)."""
    ck = Checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and not force:
        raise PixdeployError(f"{out} already exists; pass --force to replace it")
    model = ck.load_model()
    cfg = ck.config
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for spec in graph_specs(cfg):
            echo(f"exporting {spec.name}.onnx")
            export_graph(model, spec, tmp / f"{spec.name}.onnx")
        np.save(tmp / "text_embeddings.npy", model.tok_emb.weight.detach().float().numpy(), allow_pickle=False)
        ck.tokenizer.save(tmp / "tokenizer.json")
        source = {"checkpoint": str(ck.path), "checkpoint_step": ck.step}
        write_manifest(tmp, cfg, {"source": source})

        echo("checking parity against PyTorch")
        pipeline = Pipeline.load(tmp, device="cpu")
        result = check_parity(model, pipeline, images or default_parity_images())
        (tmp / "parity.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        if not result:
            report = out.parent / f"{out.name}.parity-failed.json"
            shutil.copy(tmp / "parity.json", report)
            names = ", ".join(f"{c.name}={c.value:.3g}" for c in result.failures)
            raise ParityError(f"parity gate failed ({names}); no bundle written; details in {report}")
        write_manifest(tmp, cfg, {"source": source, "parity": {"passed": True, "precision": result.precision}})
        replace_dir(tmp, out, out.parent / f".{out.name}.old-{os.getpid()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Bundle(out), result
