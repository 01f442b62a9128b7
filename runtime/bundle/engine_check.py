"""An engine set held to its bundle: every engine file checksummed, its header read to the strict schema of
`pixdeploy.runtime.engine_header`, and checked against the set's record and the graph it was built from. The one
check of an engine before anything uses it (triton, inspect, the TensorRT runtime)."""

from __future__ import annotations

from pathlib import Path

from pixdeploy.runtime.bundle.layout import GRAPHS, BundleError
from pixdeploy.runtime.bundle.records import EngineSet

from pixdeploy.text import printable


def engine_files(bundle, engine_set: EngineSet) -> dict[str, Path]:
    """graph -> engine file of a set, each checksummed."""
    missing = [g for g in GRAPHS if g not in engine_set.files]
    if missing:
        raise BundleError(f"damaged bundle {bundle.path}: engine set {engine_set.name} has no {', '.join(missing)}")
    return {g: bundle.checked(engine_set.files[g]) for g in GRAPHS}


def engine_headers(bundle, engine_set: EngineSet) -> dict[str, dict]:
    """graph -> header of each engine of a set, checked against the bundle and the set's record: the graph and
    variant it is for, the variant's precision, the TensorRT, GPU and compute capability the set records, the
    sha256 of the graph it was built from, and profiles over exactly the graph's inputs (their ranks and fixed
    dims, batch dims within the set's max batch, other dims within the context)."""
    from pixdeploy.runtime.engine_header import read_header

    variant = bundle.variant(engine_set.variant)
    headers = {}
    for graph, path in engine_files(bundle, engine_set).items():
        header = read_header(path)
        graph_file = variant.graphs[graph]
        bundle.graph_path(graph, engine_set.variant)  # checksummed: the recorded sha256 is the file's
        expected = {"graph": graph, "variant": engine_set.variant, "tensorrt": engine_set.tensorrt,
                    "gpu": engine_set.gpu, "compute_capability": engine_set.compute_capability,
                    "precision": variant.precision, "version_compatible": engine_set.version_compatible,
                    "max_batch": engine_set.max_batch, "source_sha256": bundle.files[graph_file]["sha256"]}
        problems = [f"its {k} is {header.get(k, False if k == 'version_compatible' else None)!r:.80}, "
                    f"not {v!r:.80}" for k, v in expected.items()
                    if header.get(k, False if k == "version_compatible" else v) != v]
        if any(p.startswith("its source_sha256") for p in problems):
            problems = [f"it was not built from this bundle's {graph_file} (another source sha256)"] + \
                [p for p in problems if not p.startswith("its source_sha256")]
        problems += _profile_problems(bundle, graph, header["profiles"], engine_set.max_batch)
        if problems:
            raise BundleError(printable(f"engine {path} does not match bundle {bundle.path}: "
                                        + "; ".join(problems[:3])))
        headers[graph] = header
    return headers


def _profile_problems(bundle, graph: str, profiles: list, max_batch: int) -> list[str]:
    inputs = {name: list(t.shape) for name, t in bundle.signatures[graph].inputs.items()}
    first = next(iter(inputs.values()), None) or [None]
    batch_dims = {first[0]} if isinstance(first[0], str) else set()  # the batch: the first input's first dim
    problems = []
    for p in profiles:
        shapes = p["shapes"]
        if set(shapes) != set(inputs):
            unknown, absent = sorted(set(shapes) - set(inputs)), sorted(set(inputs) - set(shapes))
            problems.append(f"profile {p['name']} names inputs {unknown} the graph does not have"
                            if unknown else f"profile {p['name']} leaves out the inputs {absent}")
            continue
        for name, shape in inputs.items():
            lo, opt, hi = shapes[name]
            if len(hi) != len(shape):
                problems.append(f"profile {p['name']} gives {name} rank {len(hi)}, the graph {len(shape)}")
                continue
            for d, a, c in zip(shape, lo, hi):
                bound = max_batch if d in batch_dims else bundle.config.max_seq_len
                if (isinstance(d, int) and not a == c == d) or (isinstance(d, str) and not 1 <= a <= c <= bound):
                    problems.append(f"profile {p['name']} gives {name} dims {lo}..{hi}, outside the graph's "
                                    f"{shape} (batch at most {max_batch})")
                    break
    return problems
