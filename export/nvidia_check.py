"""NVIDIA's own ONNX parser and TensorRT builder as the judge of a bundle's graphs, on a machine with no GPU.

    pixdeploy build-engine bundle/ --check

TensorRT for RTX (``pip install tensorrt-rtx-cu12``, ``import tensorrt_rtx``; x86_64 Linux and Windows) ships
NVIDIA's ONNX parser (a fork of onnx-tensorrt, newer than any TensorRT 10.x parser) and a builder that compiles
engines ahead of time on the CPU alone, for the compute capabilities it is told (SM75-SM121). Neither needs a GPU
or a CUDA driver; running an engine does. So every graph a TensorRT-bound variant holds is parsed and built here
exactly as `build-engine` would on a GPU — the same strongly typed network, parser flags, decomposable attention
and optimization profiles (`pixdeploy.export.engine`) — and the verdict names the graph, node, operator and
NVIDIA's own message. What it proves and what it does not: a clean parse and build is NVIDIA's word for TensorRT
10.15+ and 11.x (the parser lineage TensorRT for RTX follows); for TensorRT 10.3, an older parser, it is evidence,
not proof, so `pixdeploy.export.trt_support`'s 10.3 table still decides there. Engines built for RTX GPUs here are
not the engines a datacenter GPU or a Jetson runs (TensorRT for RTX targets neither Hopper nor Orin's SM87).

The parse and build run in a child process: Polygraphy binds TensorRT or TensorRT for RTX once, at import
(``POLYGRAPHY_USE_TENSORRT_RTX``), so the choice cannot be made inside a process that may already use TensorRT,
and a crash in native code ends the child, not the command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pixdeploy.export.engine import build_settings, derive_profiles
from pixdeploy.export.profiles import get_profile
from pixdeploy.runtime.backends import check_graphs_load
from pixdeploy.runtime.bundle import GRAPHS, Bundle

from pixdeploy.errors import PixdeployError
from pixdeploy.text import printable

# Ampere datacenter (A100), Ampere RTX and Ada: the SM targets of TensorRT for RTX nearest the GPUs pixdeploy's
# users build for (Hopper and Jetson Orin's SM87 are not among its targets).
COMPUTE_CAPABILITIES = ("8.0", "8.6", "8.9")
INSTALL_RTX = ("NVIDIA's parser and builder for machines without a GPU are not installed: "
               "pip install tensorrt-rtx-cu12 (x86_64 Linux or Windows)")
# The parser's own per-node report (onnx-tensorrt ModelImporter): node index, name, operator, checker, code, message.
_NODE_ERROR = re.compile(r"In node (-?\d+) with name:\s*(.*?)\s*and operator: (\S+) \(([^)]*)\): (\w+): (.*)")
_ASSERTED = re.compile(r'^.*?&&\s*"(.*)"\s*$')  # `!cond && "message"`: the message alone


@dataclass(frozen=True)
class Verdict:
    """What NVIDIA's parser and builder said of one graph."""

    variant: str
    graph: str
    parsed: bool
    built: bool  # False when the parse failed too
    problems: tuple = ()  # one line each: "node NAME (OP): message" or the builder's message
    warnings: tuple = ()  # the parser's and builder's warnings, each once
    engine_bytes: int = 0
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.parsed and self.built

    def line(self) -> str:
        what = f"{self.variant:<14} {self.graph:<14}"
        if self.accepted:
            return f"{what} parsed, built  {self.engine_bytes / 1e6:5.1f} MB  {self.seconds:4.1f} s"
        stage = "refused by the parser" if not self.parsed else "parsed, refused by the builder"
        return f"{what} {stage}: " + "; ".join(printable(p) for p in self.problems)


@dataclass(frozen=True)
class Report:
    tensorrt_rtx: str
    compute_capabilities: tuple
    max_batch: int
    verdicts: tuple = field(default_factory=tuple)

    @property
    def accepted(self) -> bool:
        return all(v.accepted for v in self.verdicts)

    def to_dict(self) -> dict:
        return {"tensorrt_rtx": self.tensorrt_rtx, "compute_capabilities": list(self.compute_capabilities),
                "max_batch": self.max_batch, "verdicts": [asdict(v) for v in self.verdicts]}


def available() -> bool:
    return importlib.util.find_spec("tensorrt_rtx") is not None


def tensorrt_variants(bundle: Bundle) -> list[str]:
    """The variants meant for TensorRT: all but those made for onnxruntime on a CPU."""
    return [name for name, entry in bundle.variants.items() if entry.target != "cpu"]


def parse_compute_capability(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,2})\.(\d)\s*", text)
    if not m:
        raise PixdeployError(f"--compute-capability expects MAJOR.MINOR such as 8.6, got {printable(text)!r}")
    return int(m[1]), int(m[2])


def job(variant: str, graph: str, path: Path, profiles: list, trt_version: str) -> dict:
    """One graph and everything `build-engine` would build it with for ``trt_version``, as plain data."""
    settings = build_settings(trt_version)
    return {"variant": variant, "graph": graph, "path": str(path), "profiles": [p.to_dict() for p in profiles],
            "parser_flags": list(settings.parser_flags), "decomposable_attention": settings.decomposable_attention}


def jobs_for(bundle: Bundle, variants: list[str], max_batch: int) -> list[dict]:
    """One job per graph of each variant, with the bundle's own optimization profiles."""
    profile = get_profile(bundle.export_target)
    if profile.tensorrt_min is None:
        raise PixdeployError(f"{bundle.path} was exported for {profile.suits} (--target {profile.name}): its graphs "
                             "are not meant for TensorRT; re-export it with --target tensorrt-10.15 or tensorrt-10.3")
    return [job(variant, graph, bundle.graph_path(graph, variant),  # checksummed, inside; refuses unknown variants
                derive_profiles(graph, bundle.graphs[graph], bundle.config, max_batch), profile.tensorrt_min)
            for variant in variants for graph in GRAPHS]


def check_bundle(bundle_path, variants: list[str] | None = None, *, max_batch: int = 4,
                 compute_capabilities=COMPUTE_CAPABILITIES, echo=print) -> Report:
    """Parse and build every graph of ``variants`` (default: every TensorRT-bound variant) with NVIDIA's parser and
    builder on the CPU. Writes nothing."""
    if not available():
        raise PixdeployError(INSTALL_RTX)
    bundle = Bundle(bundle_path)
    variants = variants or tensorrt_variants(bundle)
    for variant in variants:  # the verification build-engine runs first: graphs that load, with their signatures
        check_graphs_load(bundle, variant)
    jobs = jobs_for(bundle, variants, max_batch)  # refuses what is not for TensorRT before any line is printed
    ccs = _compute_capabilities(compute_capabilities)
    echo(printable(f"{bundle_path}: NVIDIA's ONNX parser and TensorRT builder (TensorRT for RTX, on the CPU), "
                   f"compute capability {' '.join(f'{a}.{b}' for a, b in ccs)}, profiles for --max-batch {max_batch}:"))
    return run_child(jobs, compute_capabilities, max_batch, lambda line: echo("  " + line))


def check_files(files: dict, trt_version: str = "10.15", compute_capabilities=COMPUTE_CAPABILITIES,
                echo=print) -> Report:
    """Parse and build standalone ONNX files (static shapes: no optimization profile) with the settings
    `build-engine` uses for ``trt_version``: how pixdeploy's own tables are checked against NVIDIA's parser."""
    if not available():
        raise PixdeployError(INSTALL_RTX)
    return run_child([job("-", name, Path(path), [], trt_version) for name, path in files.items()],
                     compute_capabilities, 0, echo)


def _compute_capabilities(given) -> list[tuple[int, int]]:
    return [parse_compute_capability(c) if isinstance(c, str) else tuple(c) for c in given]


def run_child(jobs: list[dict], compute_capabilities, max_batch: int, echo) -> Report:
    request = {"jobs": jobs, "compute_capabilities": _compute_capabilities(compute_capabilities)}
    env = {**os.environ, "POLYGRAPHY_USE_TENSORRT_RTX": "1"}
    # The child's own messages go to a file, not a pipe: a pipe nobody reads while the verdicts are read could
    # fill and stop the child.
    stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    child = subprocess.Popen([sys.executable, "-m", "pixdeploy.export.nvidia_check"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    verdicts, version = [], "?"
    try:
        child.stdin.write(json.dumps(request))
        child.stdin.close()
        for line in child.stdout:
            record = json.loads(line)
            if "error" in record:
                raise PixdeployError(record["error"])
            if "tensorrt_rtx" in record:
                version = record["tensorrt_rtx"]
                continue
            verdict = Verdict(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})
            echo(verdict.line())
            verdicts.append(verdict)
        code = child.wait()
        stderr.seek(0)
        err = stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        stderr.close()
    if code != 0 or len(verdicts) != len(request["jobs"]):
        last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), f"exit status {code}")
        raise PixdeployError(f"NVIDIA's parser and builder stopped before judging every graph: {printable(last)}")
    return Report(version, tuple(f"{a}.{b}" for a, b in request["compute_capabilities"]), max_batch, tuple(verdicts))


# ---- the child: Polygraphy on TensorRT for RTX ----

def _one_line(message: str) -> str:
    text = " ".join(message.split())
    m = _NODE_ERROR.search(text)
    if m:
        detail = _ASSERTED.sub(r"\1", m[6])
        return f"node {m[2] or '#' + m[1]} ({m[3]}): {detail}"
    return text[:600]


class _Collector:
    """Everything Polygraphy and TensorRT log at warning or above, for the current graph."""

    def __init__(self):
        import logging

        self.errors, self.warnings = [], []
        collector = self

        class Handler(logging.Handler):
            def emit(self, record):
                text = re.sub(r"^\[\w\]\s*", "", record.getMessage())
                (collector.errors if record.levelno >= logging.ERROR else collector.warnings).append(text)

        self.handler = Handler(level=logging.WARNING)

    def reset(self):
        self.errors, self.warnings = [], []


def _judge(job: dict, ccs: list, trt, collector: _Collector) -> dict:
    from polygraphy.backend.tensorrt_rtx import CreateConfigRTX
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath, Profile, SetDecomposableAttentions

    collector.reset()
    start = time.perf_counter()
    flags = [getattr(trt.OnnxParserFlag, f) for f in job["parser_flags"]] or None
    result = {"variant": job["variant"], "graph": job["graph"], "parsed": False, "built": False}
    try:
        network = NetworkFromOnnxPath(job["path"], strongly_typed=True, flags=flags)
        if job["decomposable_attention"]:
            network = SetDecomposableAttentions(network)
        parsed = network()  # (builder, network, parser): the parse alone, so its verdict stands apart
        result["parsed"] = True
        profiles = []
        for p in job["profiles"]:
            profile = Profile()
            for name, (lo, opt, hi) in p["shapes"].items():
                profile.add(name, min=lo, opt=opt, max=hi)
            profiles.append(profile)
        plan = EngineBytesFromNetwork(parsed, config=CreateConfigRTX(profiles=profiles, compute_capabilities=ccs))()
        result.update(built=True, engine_bytes=int(plan.nbytes))
    except Exception as e:  # Polygraphy raises PolygraphyException after logging TensorRT's own messages
        problems = [_one_line(m) for m in collector.errors if "In node" in m] or \
                   [_one_line(m) for m in collector.errors if not m.startswith(("ModelImporter", "--- "))] or \
                   [_one_line(str(e))]
        result["problems"] = list(dict.fromkeys(problems))
    result["warnings"] = list(dict.fromkeys(_one_line(w) for w in collector.warnings))
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _child() -> None:
    import logging

    # Results go to the parent on the original stdout; anything else writing there (Polygraphy's notices, native
    # code) goes to stderr instead, so the parent reads JSON lines only.
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from polygraphy import config
    from polygraphy.logger import G_LOGGER

    if not config.USE_TENSORRT_RTX:
        raise SystemExit("POLYGRAPHY_USE_TENSORRT_RTX=1 must be set before Polygraphy is imported")
    import tensorrt_rtx as trt

    collector = _Collector()
    G_LOGGER.use_python_logging_system = True
    G_LOGGER.module_severity = G_LOGGER.WARNING
    polygraphy_log = logging.getLogger("Polygraphy")
    polygraphy_log.propagate = False
    polygraphy_log.addHandler(collector.handler)
    polygraphy_log.setLevel(logging.WARNING)
    request = json.loads(sys.stdin.read())
    known = sorted(m[2:] for m in dir(trt.ComputeCapability) if re.fullmatch(r"SM\d+", m))
    wanted = [f"{a}{b}" for a, b in request["compute_capabilities"]]
    if not set(wanted) <= set(known):
        names = ", ".join(f"{k[:-1]}.{k[-1]}" for k in known)
        print(json.dumps({"error": f"TensorRT for RTX {trt.__version__} builds for compute capabilities {names} "
                                   "only"}), file=results, flush=True)
        return
    print(json.dumps({"tensorrt_rtx": trt.__version__}), file=results, flush=True)
    for item in request["jobs"]:
        verdict = _judge(item, [tuple(c) for c in request["compute_capabilities"]], trt, collector)
        print(json.dumps(verdict), file=results, flush=True)


if __name__ == "__main__":
    _child()
