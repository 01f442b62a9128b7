"""`inspect`: what a bundle holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pixdeploy.cli import main


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
    from pixdeploy.export.profiles import bundle_profile

    profile = bundle_profile(m)  # export target: which runtimes can parse the graphs
    click.echo(f"export target: {profile.name} ({profile.suits})")
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
    from pixdeploy.runtime.tensorrt_backend import describe_engines

    for line in describe_engines(b.path):  # TensorRT engines built into the bundle, if any
        click.echo(line)
    parity = json.loads(b.file("parity.json").read_text()) if b.file("parity.json").is_file() else None
    if parity:
        click.echo(f"parity ({parity['precision']}): {'passed' if parity['passed'] else 'FAILED'}")
        for c in parity["checks"]:
            click.echo(f"    {c['name']}: {c['value']:.3g}")
    for line in describe_variants(b):
        click.echo(line)


def describe_variants(b) -> list[str]:
    """The variants side by side: precision, target, size, and what their parity gate measured."""
    variants = b.variants
    if len(variants) == 1:
        return []
    checks = sorted({k for v in variants.values() for k in ((v.get("parity") or {}).get("checks") or {})})
    rows = [["variant", "precision", "target", "MB", *checks]]
    for name, v in variants.items():
        size = sum(b.graph_path(g, name).stat().st_size for g in v["graphs"]) / 1e6
        measured = (v.get("parity") or {}).get("checks") or {}
        if name == "fp32" and not measured and b.file("parity.json").is_file():  # fp32 records its checks there
            measured = {c["name"]: c["value"] for c in json.loads(b.file("parity.json").read_text())["checks"]}
        rows.append([name, v.get("precision", "?"), v.get("target", "?"), f"{size:.1f}",
                     *(f"{measured[k]:.6g}" if k in measured else "-" for k in checks)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["variants:"] + ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]


