"""`inspect`: what a bundle holds."""

from __future__ import annotations

from pathlib import Path

import click

from pixdeploy.cli.app import PathArg, main, say
from pixdeploy.text import printable


def describe_custom_ops(path: Path) -> list[str]:
    """One line per custom-domain op in a graph, and whether it carries its function body."""
    from collections import Counter

    try:
        import onnx
    except ImportError:  # a runtime-only install (e.g. a Jetson) need not have onnx
        return ["custom ops: not listed (pip install onnx to list them)"]
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        return [f"custom ops: not listed ({path.name} does not parse: {str(e).splitlines()[0][:200]})"]
    custom = Counter((n.domain, n.op_type) for n in proto.graph.node if n.domain not in ("", "ai.onnx"))
    bodies = {(f.domain, f.name) for f in proto.functions}
    return [f"custom op {domain}::{op} x{count}, "
            + ("with its function body" if (domain, op) in bodies else "WITHOUT a function body")
            for (domain, op), count in custom.items()]


def tensor_type(v) -> str:
    return f"{v.get('dtype', '?')}{v.get('shape', '?')}" if isinstance(v, dict) else "?"


def load_graphs(bundle) -> str:
    """Load every variant's graphs as `Pipeline.load` does (onnxruntime, CPU); one line saying what was checked."""
    from pixdeploy.runtime.backends import check_graphs_load

    if not all([check_graphs_load(bundle, variant) for variant in bundle.variants]):
        return 'graphs: checksums verified; not loaded (pip install "pixdeploy[onnx]" to check that they load)'
    return "graphs: verified and loaded (onnxruntime, CPU" + (", every variant)" if len(bundle.variants) > 1 else ")")


@main.command()
@click.argument("bundle", type=PathArg())
def inspect(bundle):
    """Show a bundle's manifest, graphs, custom ops, sizes and opset, once it passes the checks loading runs."""
    from pixdeploy.runtime import Bundle

    b = Bundle(bundle)  # the verification every loader runs: refused here exactly when generate/embed refuse
    graphs_loaded = load_graphs(b)  # ...and the graphs load, before a line of the report is printed
    for engine_set in b.engine_sets():  # ...and every engine's header matches the bundle, as triton checks it
        b.engine_headers(engine_set)
    parity = b.parity_record()
    from pixdeploy.export.profiles import get_profile  # plain data: no onnx, no torch

    profile = get_profile(b.export_target)
    cfg = b.config
    say(f"{b.path}: pixdeploy bundle format {b.format_version}, {b.producer}")
    say(f"model: dim {cfg.dim}, {cfg.image_layers} image + {cfg.n_layers} decoder layers, "
        f"image {cfg.image_size} window {cfg.window} fold {cfg.fold} ({cfg.n_colors} colours), "
        f"text vocab {cfg.text_vocab}, context {cfg.max_seq_len}")
    say(f"onnx: {b.onnx_info}")
    say(f"export target: {profile.name} ({profile.suits})")
    for name, g in b.graphs.items():
        size = b.graph_path(name).stat().st_size
        say(f"  {b.variant()['graphs'][name]['file']} ({size / 1e6:.1f} MB): "
            f"{g.get('purpose', '?')}")
        cache = {n for p in b.cache_pairs() for n in (p.past, p.present)} if name == "decoder" else set()
        for kind in ("inputs", "outputs"):
            tensors = g.get(kind) if isinstance(g.get(kind), dict) else {}
            kv = [k for k in tensors if k in cache]
            sig = [f"{k} {tensor_type(v)}" for k, v in tensors.items() if k not in cache]
            if kv:
                sig.append(f"{len(kv)} KV-cache tensors {tensor_type(tensors[kv[0]])}")
            say(f"    {kind}: {', '.join(sig)}")
        for line in describe_custom_ops(b.graph_path(name)):
            say(f"    {line}")
    say(graphs_loaded)
    for engine_set in b.engine_sets():  # TensorRT engines built into the bundle, if any
        say(f"engines/{engine_set.describe()}")
    if b.format_version == 1:
        say("bundle format 1: engines built for it are not used; rebuild them with `pixdeploy build-engine`")
    if parity:
        say(f"parity ({parity['precision']}): {'passed' if parity['passed'] else 'FAILED'}")
        for name, value in parity["checks"]:
            say(f"    {name}: {value:.3g}")
    for line in describe_variants(b, parity):
        say(line)


def _figure(value) -> str:
    """A parity figure from the manifest (untrusted: anything but a number is shown as '?')."""
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def describe_variants(b, fp32_parity: dict | None) -> list[str]:
    """The variants side by side: precision, target, size, and what their parity gate measured."""
    variants = b.variants
    if len(variants) == 1:
        return []
    checks = sorted({k for v in variants.values() for k in ((v.get("parity") or {}).get("checks") or {})})
    rows = [["variant", "precision", "target", "MB", *map(printable, checks)]]
    for name, v in variants.items():
        size = sum(b.graph_path(g, name).stat().st_size for g in v["graphs"]) / 1e6
        measured = (v.get("parity") or {}).get("checks") or {}
        if name == "fp32" and not measured and fp32_parity:  # fp32 records its checks in parity.json
            measured = dict(fp32_parity["checks"])
        rows.append([printable(str(x)) for x in (name, v.get("precision", "?"), v.get("target", "?"))]
                    + [f"{size:.1f}",
                       *(_figure(measured.get(k)) for k in checks)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["variants:"] + ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for name in variants:
        lines += describe_cpu_scheme(b, name)
    return lines


def describe_cpu_scheme(b, name: str) -> list[str]:
    """What `quantize --target cpu` measured for a variant: the scheme kept, on which CPU class, every candidate's
    ratios to fp32, and whether this CPU is of the same class."""
    from pixdeploy.cpu import cpu_class

    record = b.cpu_scheme(name)
    if record is None:
        return []
    here = cpu_class()
    lines = [f"{printable(name)}: int8 scheme {record['scheme']}, measured fastest on CPU class {record['isa']} "
             + ("(this CPU's too)" if record["isa"] == here else f"(this CPU is {here}: measured elsewhere)")
             + "; ratios to fp32 (p50/p90/p99):"]
    for scheme, r in record["ratios_vs_fp32"].items():
        stages = "; ".join(f"{st.replace('_', ' ')} " + "/".join(_ratio(r.get(st, {}).get(q))
                                                                 for q in ("p50", "p90", "p99"))
                           for st in ("encoder", "decoder_step"))
        why = record["rejected_by_parity"].get(scheme)
        mark = "  <- kept" if scheme == record["scheme"] else (f"  failed parity ({why})" if why else "")
        lines.append(f"    {scheme}: {stages}{mark}")
    return lines


def _ratio(value) -> str:
    return "?" if value is None else f"{value:.2f}x"


