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


def tensor_type(t) -> str:
    """``float32['batch', 64]``: a recorded tensor's dtype and shape, as the manifest writes them."""
    return printable(f"{t.dtype}{list(t.shape)}")


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
    from pixdeploy.export.profiles import get_profile  # plain data: no onnx, no torch

    profile = get_profile(b.export_target)
    cfg = b.config
    say(f"{b.path}: pixdeploy bundle format {b.format_version}, {b.producer}")
    say(f"model: dim {cfg.dim}, {cfg.image_layers} image + {cfg.n_layers} decoder layers, "
        f"image {cfg.image_size} window {cfg.window} fold {cfg.fold} ({cfg.n_colors} colours), "
        f"text vocab {cfg.text_vocab}, context {cfg.max_seq_len}")
    say(f"onnx: {b.onnx_info}")
    say(f"export target: {profile.name} ({profile.suits})")
    for name, g in b.signatures.items():
        path = b.graph_path(name)
        say(f"  {printable(b.variant().graphs[name])} ({path.stat().st_size / 1e6:.1f} MB): "
            f"{printable(g.purpose or '?')}")
        cache = {n for p in b.cache_pairs() for n in (p.past, p.present)} if name == "decoder" else set()
        for kind in ("inputs", "outputs"):
            tensors = getattr(g, kind)
            kv = [k for k in tensors if k in cache]
            sig = [f"{printable(k)} {tensor_type(v)}" for k, v in tensors.items() if k not in cache]
            if kv:
                sig.append(f"{len(kv)} KV-cache tensors {tensor_type(tensors[kv[0]])}")
            say(f"    {kind}: {', '.join(sig)}")
        for line in describe_custom_ops(path):
            say(f"    {line}")
    say(graphs_loaded)
    for engine_set in b.engine_sets():  # TensorRT engines built into the bundle, if any
        say(f"engines/{engine_set.describe()}")
    if b.format_version == 1:
        say("bundle format 1: engines built for it are not used; rebuild them with `pixdeploy build-engine`")
    parity = b.parity()
    if parity is not None:
        say(f"parity ({printable(parity.precision or 'fp32')}): {'passed' if parity.passed else 'FAILED'}")
        for check, value in parity.checks:
            say(f"    {printable(check)}: {value:.3g}")
    for line in describe_variants(b):
        say(line)


def describe_variants(b) -> list[str]:
    """The variants side by side: precision, target, size, and what their parity gate measured."""
    variants = b.variants
    if len(variants) == 1:
        return []
    measured = {name: dict(p.checks) if (p := b.parity(name)) is not None else {} for name in variants}
    checks = sorted({k for m in measured.values() for k in m})
    rows = [["variant", "precision", "target", "MB", *checks]]
    for name, v in variants.items():
        size = sum(b.graph_path(g, name).stat().st_size for g in v.graphs) / 1e6
        rows.append([name, v.precision, v.target, f"{size:.1f}",
                     *(f"{measured[name][k]:.6g}" if k in measured[name] else "-" for k in checks)])
    rows = [[printable(str(c)) for c in r] for r in rows]
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
    lines = [f"{printable(name)}: int8 scheme {printable(record.scheme)}, measured fastest on CPU class "
             f"{printable(record.isa)} "
             + ("(this CPU's too)" if record.isa == here else f"(this CPU is {here}: measured elsewhere)")
             + "; ratios to fp32 (p50/p90/p99):"]
    for scheme, r in record.ratios_vs_fp32.items():
        stages = "; ".join(f"{st.replace('_', ' ')} " + "/".join(_ratio(r.get(st, {}).get(q))
                                                                 for q in ("p50", "p90", "p99"))
                           for st in ("encoder", "decoder_step"))
        why = record.rejected_by_parity.get(scheme)
        mark = "  <- kept" if scheme == record.scheme else (f"  failed parity ({why})" if why else "")
        lines.append(printable(f"    {scheme}: {stages}{mark}"))
    return lines


def _ratio(value) -> str:
    return "?" if value is None else f"{value:.2f}x"


