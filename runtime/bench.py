"""Latency of a bundle, stage by stage, with PyTorch eager timed in the same run as the baseline.

    from pixdeploy.runtime.bench import BenchOptions, run_bench
    report = run_bench("bundle/", BenchOptions(stages=("encoder", "decode"), batches=(1, 8)))

Stages (what one timed call does):
- ``encoder``: letterboxed uint8 images -> window embeddings.
- ``prefill``: the image prompt (window embeddings spliced into word embeddings) -> logits and KV cache.
- ``decode``: one new token over a KV cache filled by a real prefill of ``context`` tokens.
- ``generate``: encoder + prefill + ``new_tokens`` greedy steps, end to end (stop tokens ignored, so
  every call does the same work).

Each stage warms up, then the bundle and the baseline alternate call by call (machine noise hits both
alike) and p50/p90/p99 come from the samples. Peak host memory is each side's resident-set high-water
mark over its warm-up. Torch-free: the caller brings the baseline (`pixdeploy.eager_baseline`, which needs torch).

The timing primitives live in `pixdeploy.runtime.timing`, the machine facts in `pixdeploy.runtime.machine_facts`
and the report's format (table, reading back, comparing) in `pixdeploy.runtime.bench_report`; every name of
them still imports from here.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pixdeploy.runtime.bench_report import (
    BUNDLE,
    EAGER,
    REPORT_FORMAT,
    REPORT_VERSION,
    Change,
    check_report,
    compare,
    compare_table,
    impl_label,
    read_report,
    row_key,
    row_label,
    same_machine,
    table,
)
from pixdeploy.runtime.bundle import MANIFEST
from pixdeploy.runtime.machine_facts import (
    cpu_model,
    gpu_names,
    library_versions,
    machine,
    peak_rss_mb,
    process_gpu_memory_mb,
    reset_peak_rss,
)
from pixdeploy.runtime.sampling import Sampling
from pixdeploy.runtime.timing import interleaved, percentiles
from tqdm import tqdm

from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256
from pixdeploy.machine import check_memory

STAGES = ("encoder", "prefill", "decode", "generate")
DEFAULT_CONTEXTS = (32, 128, 256, 512)  # decode context lengths, kept where the bundle's context holds them

__all__ = [  # this module's own names, and those of the modules split from it, which still import from here
    "STAGES", "DEFAULT_CONTEXTS", "BenchOptions", "Case", "load_pipeline", "compute_precision", "filler_ids",
    "decode_contexts", "bundle_cases", "measure", "sample_images", "eager_side", "time_cases", "run_bench",
    "percentiles", "interleaved",
    "reset_peak_rss", "peak_rss_mb", "process_gpu_memory_mb", "cpu_model", "gpu_names", "machine", "library_versions",
    "REPORT_FORMAT", "REPORT_VERSION", "BUNDLE", "EAGER", "row_key", "row_label", "impl_label", "table", "Change",
    "same_machine", "check_report", "read_report", "compare", "compare_table",
]


@dataclass(frozen=True)
class BenchOptions:
    """What `run_bench` times, on what, and how often. ``contexts``: decode context lengths (None: the
    `DEFAULT_CONTEXTS` the bundle's context holds); ``images``: files or Pillow images to time on (None: the
    sample images shipped with scikit-learn); ``backend_options``: `Pipeline.load`'s, for ``backend``."""

    variant: str = "fp32"
    backend: str = "onnxruntime"
    device: str = "auto"
    stages: Sequence[str] = STAGES
    batches: Sequence[int] = (1, 8)
    contexts: Sequence[int] | None = None
    new_tokens: int = 16
    iters: int = 20
    warmup: int = 3
    images: Sequence | None = None
    backend_options: Mapping = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise PixdeployError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
        for name in ("stages", "batches", "contexts", "images"):  # a record that cannot change under its reader
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))


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


def compute_precision(pipe, backend: str, backend_options: Mapping) -> str:
    """The precision the bundle's side computes in, as run: OpenVINO's inference precision, else the variant's."""
    if backend == "openvino":
        return backend_options.get("precision", "fp32")
    return pipe.bundle.variant(pipe.variant).precision


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


def bundle_cases(pipe, images: np.ndarray, sizes: np.ndarray, options: BenchOptions) -> list[Case]:
    """The bundle's side of every case of ``options`` (its contexts already resolved by `decode_contexts`);
    inputs are real images, repeated to fill a batch."""
    stages, cases = options.stages, []
    for b in options.batches:
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
            for c in options.contexts:
                ctx_ids = filler_ids(pipe, c + 1)
                _, cache = pipe.prefill(emb, ctx_ids[:c])  # a real prefill fills the cache
                token = np.full(b, ctx_ids[c], dtype=np.int64)
                step = pipe.text_embeddings[token][:, None]
                cases.append(Case("decode", b, c, 0, b, {"window_embeddings": emb, "ids": ctx_ids},
                                  {BUNDLE: lambda step=step, c=c, cache=cache: pipe._step(step, c, cache)}))
        if "generate" in stages:
            n = min(options.new_tokens, pipe.cfg.max_seq_len - len(ids))
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


# ---- the run ----

def eager_side(baseline, cfg):
    """The baseline's workloads for the bundle's config, or None without a baseline."""
    if baseline is None:
        return None
    if not callable(baseline):
        raise PixdeployError("baseline= takes pixdeploy.eager_baseline.eager_baseline(checkpoint), which builds "
                             "PyTorch eager for the bundle's config (the runtime never imports torch itself)")
    return baseline(cfg)


def time_cases(cases: list[Case], options: BenchOptions, precision: str, eager, show_progress: bool) -> list[dict]:
    """Every case timed (against eager where there is a baseline); each row names what it timed."""
    if eager is not None:
        for case in cases:
            case.fns[EAGER] = eager.workload(case)
    rows = []
    bar = tqdm(cases, desc="timing", unit="case", file=sys.stderr, disable=not show_progress)
    for case in bar:
        bar.set_postfix_str(f"{case.stage} batch {case.batch}" + (f" context {case.context}" if case.context else ""))
        measured = measure(case, options.iters, options.warmup, eager.device_memory_mb if eager else None)
        measured[BUNDLE].update(backend=options.backend, variant=options.variant, precision=precision)
        if EAGER in measured:
            measured[EAGER].update(backend="torch", variant="fp32", precision="fp32")
        rows += measured.values()
    return rows


def run_bench(bundle, options: BenchOptions | None = None, *, baseline=None, show_progress: bool = False) -> dict:
    """Time a bundle as ``options`` say; with ``baseline`` (`pixdeploy.eager_baseline.eager_baseline(checkpoint)`:
    given the bundle's config, it returns the baseline's workloads), PyTorch eager alongside. Returns the
    report; every row names the backend, variant and compute precision it timed."""
    o = options or BenchOptions()
    pipe = load_pipeline(bundle, o.variant, o.backend, o.device, **o.backend_options)
    try:
        precision = compute_precision(pipe, o.backend, o.backend_options)
        eager = eager_side(baseline, pipe.cfg)
        o = replace(o, contexts=decode_contexts(pipe, o.contexts) if "decode" in o.stages else ())
        # every case's inputs (and a decode case's caches) are made before timing starts: all of them must fit
        check_memory(sum(o.batches) * (1 + len(o.contexts)) * pipe.cfg.inference_bytes_per_image(),
                     f"--batch {','.join(map(str, o.batches))}", "lower --batch")
        rgb, sizes = sample_images(o.images, pipe.cfg.image_size)
        rows = time_cases(bundle_cases(pipe, rgb, sizes, o), o, precision, eager, show_progress)
    finally:
        pipe.close()
    return {
        "format": REPORT_FORMAT, "format_version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "libraries": library_versions(torch=eager is not None),
        "bundle": {"path": str(bundle), "manifest_sha256": sha256(Path(bundle) / MANIFEST),
                   "config": pipe.cfg.to_dict()},
        "settings": {"variant": o.variant, "backend": o.backend, "precision": precision, "device": o.device,
                     "providers": getattr(pipe.encoder, "providers", None),
                     "stages": list(o.stages), "batches": list(o.batches), "contexts": list(o.contexts),
                     "new_tokens": o.new_tokens, "iters": o.iters, "warmup": o.warmup, "images": len(rgb),
                     "baseline": None if baseline is None else getattr(baseline, "source", None)},
        "rows": rows,
    }
