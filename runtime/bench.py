"""Latency of a bundle, stage by stage, with PyTorch eager timed in the same run as the baseline.

    from pixdeploy.runtime.bench import run_bench
    report = run_bench("bundle/", stages=("encoder", "decode"), batches=(1, 8))

Stages (what one timed call does):
- ``encoder``: letterboxed uint8 images -> window embeddings.
- ``prefill``: the image prompt (window embeddings spliced into word embeddings) -> logits and KV cache.
- ``decode``: one new token over a KV cache filled by a real prefill of ``context`` tokens.
- ``generate``: encoder + prefill + ``new_tokens`` greedy steps, end to end (stop tokens ignored, so
  every call does the same work).

Each stage warms up, then the bundle and the baseline alternate call by call (machine noise hits both
alike) and p50/p90/p99 come from the samples. Peak host memory is each side's resident-set high-water
mark over its warm-up. Torch-free: the caller brings the baseline (`pixdeploy.eager_baseline`, which needs torch).
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pixdeploy.runtime.sampling import Sampling
from tqdm import tqdm

from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256
from pixdeploy.jsonfile import BadJson, brief, load_json, need
from pixdeploy.machine import check_memory
from pixdeploy.text import printable

STAGES = ("encoder", "prefill", "decode", "generate")
DEFAULT_CONTEXTS = (32, 128, 256, 512)  # decode context lengths, kept where the bundle's context holds them
REPORT_FORMAT, REPORT_VERSION = "pixdeploy-bench", 1
BUNDLE, EAGER = "bundle", "torch-eager"


# ---- timing ----

def percentiles(samples: Sequence[float]) -> dict:
    """Seconds -> p50/p90/p99 in milliseconds and the sample count."""
    a = np.asarray(samples, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def interleaved(fns: dict[str, Callable[[], object]], iters: int, warmup: int = 3, block: int = 1) -> dict:
    """Time each callable ``iters`` times, alternating between them in runs of ``block`` calls, so that
    machine noise hits every side alike; returns the raw samples (seconds) per name. A block > 1 keeps
    a small kernel's caches warm, as in real use, when its neighbour is large enough to evict them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, iters // block)):
        for name, fn in fns.items():
            for _ in range(block):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return samples


# ---- memory ----

def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux: clear_refs 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Resident-set high-water mark since the last reset (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole-process peak, never reset
    except ImportError:
        return None


def process_gpu_memory_mb() -> float | None:
    """GPU memory this process holds now (nvidia-smi), or None without an NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(u) for p, u in (line.split(",") for line in out.splitlines() if "," in line)
            if p.strip() == str(os.getpid())]
    return sum(used) if used else None


# ---- what ran where ----

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(), "gpus": gpu_names(),
            "os": platform.platform(), "hostname": platform.node()}


def library_versions(torch: bool = True) -> dict:
    """Installed versions of what a measurement may rest on (torch only when it took part)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("pixdeploy", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt") + (
            ("torch",) if torch else ()):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---- the workloads ----

@dataclass
class Case:
    """One stage at one batch size (and context): the bundle's call, the baseline's, and their inputs."""

    stage: str
    batch: int
    context: int | None
    images_per_call: int
    tokens_per_call: int
    inputs: dict
    fns: dict[str, Callable[[], object]] = field(default_factory=dict)


def load_pipeline(bundle, variant: str, backend: str, device: str, **backend_options):
    """`Pipeline.load` for the variant asked for (the bundle refuses a variant it does not hold)."""
    from pixdeploy.runtime.pipeline import Pipeline

    return Pipeline.load(bundle, variant=variant, backend=backend, device=device, **backend_options)


def compute_precision(pipe, backend: str, backend_options: dict) -> str:
    """The precision the bundle's side computes in, as run: OpenVINO's inference precision, else the variant's."""
    if backend == "openvino":
        return backend_options.get("precision", "fp32")
    return str(pipe.bundle.variant(pipe.variant).get("precision", "?"))


def filler_ids(pipe, length: int, seed: int = 0) -> list[int]:
    """The image prompt followed by word tokens drawn from the vocabulary, ``length`` ids in all."""
    ids = pipe.prompt_ids()
    rng = np.random.default_rng(seed)
    return ids + rng.integers(0, pipe.cfg.text_vocab, max(0, length - len(ids))).tolist()


def decode_contexts(pipe, asked: Sequence[int] | None) -> list[int]:
    cfg, prompt = pipe.cfg, len(pipe.prompt_ids())
    if asked:
        for c in asked:
            if not prompt <= c < cfg.max_seq_len:
                raise PixdeployError(f"decode context {c} is outside this bundle's range "
                                     f"{prompt}..{cfg.max_seq_len - 1} "
                                     f"(the image prompt is {prompt} tokens, the context holds {cfg.max_seq_len})")
        return sorted(set(asked))
    fits = [c for c in DEFAULT_CONTEXTS if prompt <= c < cfg.max_seq_len]
    return fits or [cfg.max_seq_len - 1]


def bundle_cases(pipe, images: np.ndarray, sizes: np.ndarray, stages: Sequence[str], batches: Sequence[int],
                 contexts: Sequence[int], new_tokens: int) -> list[Case]:
    """The bundle's side of every case; inputs are real images, repeated to fill a batch."""
    cases = []
    for b in batches:
        pick = np.arange(b) % len(images)
        imgs, szs = np.ascontiguousarray(images[pick]), np.ascontiguousarray(sizes[pick])
        emb = pipe.embed_letterboxed(imgs, szs)
        ids = pipe.prompt_ids()
        if "encoder" in stages:
            cases.append(Case("encoder", b, None, b, 0, {"images": imgs, "sizes": szs},
                              {BUNDLE: lambda imgs=imgs, szs=szs: pipe.embed_letterboxed(imgs, szs)}))
        if "prefill" in stages:
            cases.append(Case("prefill", b, None, b, b * len(ids), {"window_embeddings": emb, "ids": ids},
                              {BUNDLE: lambda emb=emb, ids=ids: pipe.prefill(emb, ids)}))
        if "decode" in stages:
            for c in contexts:
                ctx_ids = filler_ids(pipe, c + 1)
                _, cache = pipe.prefill(emb, ctx_ids[:c])  # a real prefill fills the cache
                token = np.full(b, ctx_ids[c], dtype=np.int64)
                step = pipe.text_embeddings[token][:, None]
                cases.append(Case("decode", b, c, 0, b, {"window_embeddings": emb, "ids": ctx_ids},
                                  {BUNDLE: lambda step=step, c=c, cache=cache: pipe._step(step, c, cache)}))
        if "generate" in stages:
            n = min(new_tokens, pipe.cfg.max_seq_len - len(ids))

            fixed = Sampling(max_new_tokens=n, stop=None)  # every call does the same work

            def gen(imgs=imgs, szs=szs, ids=ids, fixed=fixed):
                for _ in pipe.decode_steps(pipe.embed_letterboxed(imgs, szs), ids, fixed):
                    pass

            cases.append(Case("generate", b, None, b, b * n, {"images": imgs, "sizes": szs, "ids": ids,
                                                              "new_tokens": n}, {BUNDLE: gen}))
    return cases


def measure(case: Case, iters: int, warmup: int, on_gpu_torch: Callable[[], float | None] | None = None) -> dict:
    """Warm each side up alone (its peak memory), then time them interleaved."""
    memory = {}
    for name, fn in case.fns.items():
        reset_peak_rss()
        for _ in range(max(1, warmup)):
            fn()
        device_mb = on_gpu_torch() if (name == EAGER and on_gpu_torch) else process_gpu_memory_mb()
        memory[name] = {"peak_rss_mb": peak_rss_mb(), "device_memory_mb": device_mb}
    # Decode steps are small next to their neighbours: run each side in blocks, as when generating.
    samples = interleaved(case.fns, iters, warmup=0, block=min(10, iters) if case.stage == "decode" else 1)
    rows = {}
    for name, s in samples.items():
        row = {"stage": case.stage, "batch": case.batch, "context": case.context, "impl": name,
               **percentiles(s), **memory[name]}
        seconds = row["p50_ms"] / 1e3
        row["images_per_s"] = case.images_per_call / seconds if case.images_per_call else None
        row["tokens_per_s"] = case.tokens_per_call / seconds if case.tokens_per_call else None
        rows[name] = row
    if EAGER in rows:
        base = rows[EAGER]
        for row in rows.values():
            row["speedup_vs_eager"] = {q: base[f"{q}_ms"] / row[f"{q}_ms"] for q in ("p50", "p90", "p99")}
    return rows


def sample_images(paths: Sequence | None, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Letterboxed real images: the user's, or the photos and handwriting scikit-learn ships."""
    from pixdeploy.folding import prepare_batch
    from pixdeploy.sample_images import sample_images as shipped

    return prepare_batch(list(paths) if paths else shipped(), image_size)


def run_bench(bundle, *, variant: str = "fp32", backend: str = "onnxruntime", device: str = "auto",
              stages: Sequence[str] = STAGES, batches: Sequence[int] = (1, 8), contexts: Sequence[int] | None = None,
              new_tokens: int = 16, iters: int = 20, warmup: int = 3, images: Sequence | None = None,
              baseline=None, show_progress: bool = False, backend_options: dict | None = None) -> dict:
    """Time a bundle; with ``baseline`` (`pixdeploy.eager_baseline.eager_baseline(checkpoint)`: given the bundle's
    config, it returns the baseline's workloads), PyTorch eager alongside. Returns the report; every
    row names the backend, variant and compute precision it timed (``backend_options``: `Pipeline.load`'s)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise PixdeployError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    backend_options = dict(backend_options or {})
    pipe = load_pipeline(bundle, variant, backend, device, **backend_options)
    precision = compute_precision(pipe, backend, backend_options)
    eager = None
    if baseline is not None:
        if not callable(baseline):
            pipe.close()
            raise PixdeployError("baseline= takes pixdeploy.eager_baseline.eager_baseline(checkpoint), which builds "
                                 "PyTorch eager for the bundle's config (the runtime never imports torch itself)")
        eager = baseline(pipe.cfg)
    ctx = decode_contexts(pipe, contexts) if "decode" in stages else []
    try:  # every case's inputs (and a decode case's caches) are made before timing starts: all of them must fit
        check_memory(sum(batches) * (1 + len(ctx)) * pipe.cfg.inference_bytes_per_image(),
                     f"--batch {','.join(map(str, batches))}", "lower --batch")
    except PixdeployError:
        pipe.close()
        raise
    rgb, sizes = sample_images(images, pipe.cfg.image_size)
    cases = bundle_cases(pipe, rgb, sizes, stages, batches, ctx, new_tokens)
    if eager is not None:
        for case in cases:
            case.fns[EAGER] = eager.workload(case)
    rows = []
    bar = tqdm(cases, desc="timing", unit="case", file=sys.stderr, disable=not show_progress)
    for case in bar:
        bar.set_postfix_str(f"{case.stage} batch {case.batch}" + (f" context {case.context}" if case.context else ""))
        measured = measure(case, iters, warmup, eager.device_memory_mb if eager else None)
        measured[BUNDLE].update(backend=backend, variant=variant, precision=precision)
        if EAGER in measured:
            measured[EAGER].update(backend="torch", variant="fp32", precision="fp32")
        rows += measured.values()
    pipe.close()
    providers = getattr(pipe.encoder, "providers", None)
    return {
        "format": REPORT_FORMAT, "format_version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "libraries": library_versions(torch=eager is not None),
        "bundle": {"path": str(bundle), "manifest_sha256": sha256(Path(bundle) / "manifest.json"),
                   "config": pipe.cfg.to_dict()},
        "settings": {"variant": variant, "backend": backend, "precision": precision, "device": device,
                     "providers": providers,
                     "stages": list(stages), "batches": list(batches), "contexts": ctx, "new_tokens": new_tokens,
                     "iters": iters, "warmup": warmup, "images": len(rgb),
                     "baseline": None if baseline is None else getattr(baseline, "source", None)},
        "rows": rows,
    }


# ---- presenting and comparing ----

def row_key(row: dict) -> tuple:
    return row["stage"], row["batch"], row["context"], row["impl"]


def row_label(row: dict) -> str:
    ctx = f" ctx {row['context']}" if row["context"] else ""
    return f"{row['stage']} b{row['batch']}{ctx}"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def impl_label(row: dict, settings: dict) -> str:
    """What a row timed, named in full: backend/variant/precision (reports written before rows named it: from
    the settings)."""
    if row["impl"] == EAGER:
        return "torch-eager/fp32"
    backend = row.get("backend", settings.get("backend", "?"))
    variant = row.get("variant", settings.get("variant", "?"))
    return f"{backend}/{variant}/{row.get('precision', settings.get('precision', '?'))}"


def table(report: dict) -> str:
    s = report["settings"]
    lines = [f"{'stage':<22}{'impl (backend/variant/precision)':<34}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
             f"{'img/s':>9}{'tok/s':>10}"
             f"{'RSS MiB':>9}{'dev MiB':>9}{'x eager':>9}"]
    for r in report["rows"]:
        speed = r.get("speedup_vs_eager", {}).get("p50")
        lines.append(f"{row_label(r):<22}{impl_label(r, s):<34}{r['p50_ms']:>9.2f}"
                     f"{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{_fmt(r['images_per_s'], '.1f'):>9}"
                     f"{_fmt(r['tokens_per_s'], '.0f'):>10}{_fmt(r['peak_rss_mb'], '.0f'):>9}"
                     f"{_fmt(r['device_memory_mb'], '.0f'):>9}{_fmt(speed, '.2f'):>9}")
    m = report["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores" + (f", {', '.join(m['gpus'])}" if m["gpus"] else "")
                 + f"; providers: {', '.join(s['providers'] or [])}; bundle sha256 "
                 f"{report['bundle']['manifest_sha256'][:12]}")
    return "\n".join(map(printable, lines))  # labels name variants and machines: escaped line by line


@dataclass
class Change:
    label: str
    impl: str
    figure: str  # "p50" (latency: lower is better) or "speedup" (ratio to eager: higher is better)
    old: float
    new: float
    regressed: bool

    @property
    def change(self) -> float:
        return self.new / self.old - 1


def same_machine(a: dict, b: dict) -> bool:
    keys = ("cpu", "cores", "gpus")
    return all(a.get("machine", {}).get(k) == b.get("machine", {}).get(k) for k in keys)


def check_report(doc: object) -> None:
    """``BadJson`` unless ``doc`` is a bench report with every field `compare` reads of the right kind: a
    figure is a finite positive number (NaN passes every comparison, so a NaN baseline could never fail)."""
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise BadJson("is not a pixdeploy bench report")
    version = need(doc, "format_version", "an integer")
    if version != REPORT_VERSION:
        raise BadJson(f"has format version {version}; this pixdeploy reads version {REPORT_VERSION}")
    need(doc, "created", "a string", default=None)
    m = need(doc, "machine", "an object")
    need(m, "cpu", "a string", where="machine")
    need(m, "cores", "an integer", "null", where="machine")
    gpus = need(m, "gpus", "a list", where="machine")
    if not all(isinstance(g, str) for g in gpus):
        raise BadJson("field 'machine.gpus' is not a list of strings")
    libraries = need(doc, "libraries", "an object", default={})
    if not all(isinstance(v, str) for v in libraries.values()):
        raise BadJson("field 'libraries' is not an object of version strings")
    settings = need(doc, "settings", "an object", default={})
    for key in ("backend", "variant", "precision"):  # what a row timed (`impl_label`)
        need(settings, key, "a string", "null", default=None, where="settings")
    for i, row in enumerate(need(doc, "rows", "a list")):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise BadJson(f"{where} is {brief(row)}, not an object")
        need(row, "stage", "a string", where=where)
        need(row, "impl", "a string", where=where)
        for key in ("backend", "variant", "precision"):
            need(row, key, "a string", "null", default=None, where=where)
        need(row, "batch", "an integer", where=where)
        need(row, "context", "an integer", "null", where=where)
        need(row, "p50_ms", "a positive number", where=where)
        speedup = need(row, "speedup_vs_eager", "an object", default=None, where=where)
        if speedup is not None:
            need(speedup, "p50", "a positive number", where=f"{where}.speedup_vs_eager")


def read_report(path: Path) -> dict:
    """A bench report from a file, checked as `check_report` does; one `PixdeployError` naming the file."""
    try:
        doc = load_json(path)
    except FileNotFoundError:
        raise PixdeployError(f"{path}: no such file") from None
    except OSError as e:
        raise PixdeployError(f"{path}: not a readable bench report ({e.strerror or e})") from None
    except BadJson as e:
        raise PixdeployError(f"{path}: not a readable bench report: {e}") from None
    try:
        check_report(doc)
    except BadJson as e:
        raise PixdeployError(f"{path} {e}" if str(e).startswith("is not") else f"{path}: bench report {e}") from None
    return doc


def compare(new: dict, old: dict, margin: float) -> list[Change]:
    """Every figure present in both reports: p50 latency per row, and the ratio to eager where both have it.
    A figure regressed when it is worse than the old one by more than ``margin`` (0.2 = 20%). Latencies
    from another machine are shown but never count as regressed: only same-run ratios travel."""
    try:
        check_report(old)
    except BadJson as e:
        raise PixdeployError(f"not a pixdeploy bench report: {e}") from None
    gate_latency = same_machine(new, old)
    # A row is compared only with the same backend, variant and precision (a bf16 row never with an fp32 one).
    before = {(*row_key(r), impl_label(r, old.get("settings") or {})): r for r in old.get("rows", [])}
    out = []
    for r in new["rows"]:
        o = before.get((*row_key(r), impl_label(r, new.get("settings") or {})))
        if o is None:
            continue
        out.append(Change(row_label(r), r["impl"], "p50", o["p50_ms"], r["p50_ms"],
                          gate_latency and r["p50_ms"] > o["p50_ms"] * (1 + margin)))
        if "speedup_vs_eager" in r and "speedup_vs_eager" in o and r["impl"] != EAGER:
            a, b = o["speedup_vs_eager"]["p50"], r["speedup_vs_eager"]["p50"]
            out.append(Change(row_label(r), r["impl"], "speedup", a, b, b * (1 + margin) < a))
    return out


def compare_table(changes: list[Change], new: dict, old: dict) -> str:
    lines = [f"{'stage':<22}{'impl':<14}{'figure':<10}{'before':>10}{'now':>10}{'change':>9}"]
    for c in changes:
        lines.append(f"{c.label:<22}{c.impl:<14}{c.figure:<10}{c.old:>10.3f}{c.new:>10.3f}{c.change:>+9.1%}"
                     + ("  REGRESSED" if c.regressed else ""))
    if not changes:
        lines.append("(no stage, batch and context in common)")
    if not same_machine(new, old):
        lines.append("note: the runs are from different machines: latencies are shown, "
                     "only ratios to eager can regress")
        for when, report in (("before", old), ("now", new)):  # the old report's strings are untrusted text
            m = report["machine"]
            lines.append(printable(f"  {when}: {m['cpu']}, {m['cores']} cores" + "".join(f", {g}" for g in m["gpus"])))
    before, now = old.get("libraries", {}), new.get("libraries", {})
    changed = [f"{k} {before.get(k, '-')} -> {now.get(k, '-')}" for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k)]
    if changed:
        lines.append("note: library versions differ: " + ", ".join(changed))
    return "\n".join(map(printable, lines))  # an old report's labels are untrusted text: escaped line by line
