"""Bundle -> Triton Inference Server model repository.

    REPO/
        pixdeploy_repository.json     what wrote this folder (so --force replaces only a repository)
        image_encoder/config.pbtxt    uint8 letterboxed images + sizes -> window embeddings; dynamic batching
        image_encoder/1/model.onnx    (+ model.py with --backend python; model.plan with --backend tensorrt)
        decoder/config.pbtxt          prefill / one decode step over the fixed-size KV cache
        decoder/1/...
        pixdeploy/                    Python backend, decoupled: image bytes + prompt -> streamed text
        pixdeploy_generate/           the same loop, one response per request (plain HTTP clients)
        pixdeploy/1/bundle/           manifest, tokenizer and word-embedding table the loop needs

Every config is built as Triton's own protobuf message (`tritonclient.grpc.model_config_pb2`) from the
bundle's manifest, so names, dtypes and dims are the graphs' and a typo cannot reach the server. The
generation loop is the runtime's `Pipeline`, run over BLS calls to the two graph models.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pixdeploy.runtime.backends import check_graphs_load
from pixdeploy.runtime.bundle import DEFAULT_VARIANT, GRAPHS, Bundle, BundleError, select_engine_set

from pixdeploy import __version__
from pixdeploy.errors import PixdeployError
from pixdeploy.files import check_replaceable, staged_dir, writing
from pixdeploy.text import printable

REPOSITORY_FORMAT = "pixdeploy-triton-repository"
MARKER = "pixdeploy_repository.json"
MODELS_DIR = Path(__file__).parent / "triton_models"  # the Python-backend model code, shipped as package data
DEFAULT_MAX_BATCH = 8
MAX_BATCH_LIMIT = 1 << 16  # Triton stores max_batch_size as int32; a batch this large is no real request
MAX_INSTANCES = 1024
STREAM_MODEL, GENERATE_MODEL = "pixdeploy", "pixdeploy_generate"
# What the generation models need from the bundle besides the graphs (which run in their own models).
LOOP_FILES = ("manifest.json", "tokenizer.json", "text_embeddings.npy")

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class GraphBackend:
    """How one kind of Triton model runs a bundle graph."""

    platform: str  # config `platform`, or "" when `backend` names it
    backend: str
    model_file: str  # the file Triton looks for in the version folder
    instance_kind: str
    why: str


# One row per --backend; dispatch goes through this table.
GRAPH_BACKENDS = {
    "onnxruntime": GraphBackend("onnxruntime_onnx", "", "model.onnx", "KIND_GPU",
                                "Triton's onnxruntime backend runs the ONNX graphs on the GPU"),
    "tensorrt": GraphBackend("tensorrt_plan", "", "model.plan", "KIND_GPU",
                             "Triton's TensorRT backend runs engines built from the graphs"),
    "python": GraphBackend("", "python", "model.onnx", "KIND_CPU",
                           "onnxruntime inside Python-backend models: runs on a CPU-only Triton"),
}

# Inputs of the generation models: (name, Triton dtype, why). All but IMAGE are optional.
LOOP_INPUTS = (
    ("IMAGE", "TYPE_STRING", "the encoded image file (JPEG, PNG, ...), letterboxed by the runtime's own code"),
    ("PROMPT", "TYPE_STRING", "UTF-8 text after the image"),
    ("MAX_NEW_TOKENS", "TYPE_INT32", "default 32"),
    ("TEMPERATURE", "TYPE_FP32", "0 (default): greedy"),
    ("TOP_K", "TYPE_INT32", "0 (default): off"),
    ("TOP_P", "TYPE_FP32", "1 (default): off"),
    ("SEED", "TYPE_INT64", "sampling seed, default 0"),
)


def _pb2():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise PixdeployError('writing Triton configs needs tritonclient: pip install "pixdeploy[serve]"') from None
    return model_config_pb2, text_format


def triton_dims(shape: list, batched: bool) -> list[int]:
    """Manifest shape -> Triton dims: symbolic dims become -1; a batched model leaves out the batch dim."""
    dims = [d if isinstance(d, int) else -1 for d in shape]
    return dims[1:] if batched else dims


def batch_axis(graph: dict) -> str | None:
    """The symbolic dim every input and output of a graph starts with, if there is one: Triton may then
    batch requests along it (the encoder's "images"). The decoder's positions have no batch axis."""
    firsts = {tuple(t["shape"][:1]) for io in ("inputs", "outputs") for t in graph[io].values()}
    if len(firsts) == 1:
        (first,) = firsts
        if first and isinstance(first[0], str):
            return first[0]
    return None


def graph_config(name: str, graph: dict, backend: str, max_batch: int, instances: int):
    """The config of one graph model, as Triton's ModelConfig message."""
    pb2, _ = _pb2()
    kind = GRAPH_BACKENDS[backend]
    batched = batch_axis(graph) is not None and max_batch > 0
    cfg = pb2.ModelConfig(name=name, max_batch_size=max_batch if batched else 0)
    if kind.platform:
        cfg.platform = kind.platform
    else:
        cfg.backend = kind.backend
    for io, field in (("inputs", cfg.input), ("outputs", cfg.output)):
        for tname, t in graph[io].items():
            if t["dtype"] not in TRITON_DTYPES:
                raise BundleError(f"graph {name}: {tname} has dtype {t['dtype']}, which has no Triton type")
            field.add(name=tname, data_type=getattr(pb2, TRITON_DTYPES[t["dtype"]]),
                      dims=triton_dims(t["shape"], batched))
    if batched:
        # Concurrent requests (from many clients, or many generation loops) share one encoder run.
        cfg.dynamic_batching.max_queue_delay_microseconds = 2000
    cfg.instance_group.add(kind=getattr(pb2.ModelInstanceGroup, kind.instance_kind), count=instances)
    return cfg


def loop_config(name: str, decoupled: bool, max_batch: int, instances: int):
    """The generation model: image bytes + prompt (+ sampling options) -> TEXT."""
    pb2, _ = _pb2()
    # The streaming model sends many responses per request, so it takes requests one at a time; the
    # plain one decodes every request of a dynamic batch together (one encoder + decoder run per step).
    batched = not decoupled and max_batch > 0
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch if batched else 0)
    for tname, dtype, _why in LOOP_INPUTS:
        cfg.input.add(name=tname, data_type=getattr(pb2, dtype), dims=[1], optional=tname != "IMAGE")
    cfg.output.add(name="TEXT", data_type=pb2.TYPE_STRING, dims=[1])
    cfg.model_transaction_policy.decoupled = decoupled
    if batched:
        cfg.dynamic_batching.max_queue_delay_microseconds = 2000
    cfg.instance_group.add(kind=pb2.ModelInstanceGroup.KIND_CPU, count=instances)
    cfg.parameters["bundle"].string_value = "bundle"  # relative to the version folder
    return cfg


def to_pbtxt(cfg) -> str:
    _, text_format = _pb2()
    return text_format.MessageToString(cfg)


def graph_artifacts(bundle: Bundle, backend: str, variant: str, engines: str | None = None) -> tuple[dict, object]:
    """({graph: the file each graph model serves}, the engine set or None). TensorRT engines come from
    `build-engine`, chosen by the format module's one rule (`select_engine_set`) for the variant."""
    if bundle.decoder_form(variant) is not None:  # the repository's generation loop feeds the plain contract
        raise PixdeployError(f"variant {variant} of {bundle.path} has a decoder written with onnxruntime's fused CPU "
                             "operators, which a Triton repository does not serve; choose another variant")
    if backend in ("onnxruntime", "python"):
        if engines is not None:
            raise PixdeployError("--engines names a TensorRT engine set; it is for --backend tensorrt")
        check_graphs_load(bundle, variant)
        return {g: bundle.graph_path(g, variant) for g in GRAPHS}, None
    check_graphs_load(bundle, variant)  # the graphs the engines were built from: the check inspect and generate run
    chosen = select_engine_set(bundle, variant, name=engines)
    return bundle.engine_files(chosen), chosen


def engine_max_batch(headers: dict) -> int:
    """The largest batch every engine of a set accepts (what Triton's TensorRT backend compares max_batch_size
    with when it loads the model)."""
    bounds = []
    for header in headers.values():
        for profile in header["profiles"]:
            first = next(iter(profile["shapes"].values()))
            bounds.append(int(first[2][0]))  # max shape, batch dim
    return min(bounds)


def check_engine_config(cfg, header: dict) -> list[str]:
    """What Triton's TensorRT backend would refuse when loading ``cfg`` over the engine ``header`` describes
    (tensorrt_backend model_state.cc / instance_state.cc): max_batch_size above the profiles' batch, dims
    outside them, and a multi-profile engine whose instance group names fewer profiles (Triton then uses
    profile 0 only)."""
    problems = []
    profiles = header["profiles"]
    batched = cfg.max_batch_size > 0
    for tensor in cfg.input:
        for p in profiles:
            lo, _, hi = (list(b) for b in p["shapes"][tensor.name])
            dims = ([cfg.max_batch_size] if batched else []) + list(tensor.dims)
            if len(dims) != len(hi):
                problems.append(f"{cfg.name}.{tensor.name}: rank {len(dims)}, engine {len(hi)}")
                continue
            for d, a, b in zip(dims, lo, hi):
                if d != -1 and not a <= d <= b:
                    problems.append(f"{cfg.name}.{tensor.name}: dims {dims} outside profile {p['name']} "
                                    f"({lo}..{hi})")
                    break
    if len(profiles) > 1:
        for group in cfg.instance_group:
            if sorted(group.profile) != [str(i) for i in range(len(profiles))]:
                problems.append(f"{cfg.name}: instance group uses profiles {list(group.profile) or ['0']} of "
                                f"{len(profiles)}")
    return problems


def copy_model_file(source: Path, target: Path, backend: str) -> None:
    """Triton's TensorRT backend reads a bare plan: the pixdeploy header of an engine file is left out."""
    if backend == "tensorrt":
        from pixdeploy.runtime.engine_header import read_engine

        target.write_bytes(read_engine(source)[1])
    else:
        shutil.copyfile(source, target)


def is_repository_dir(path: Path) -> bool:
    """A folder this writer made (so --force may replace it)."""
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")).get("format") == REPOSITORY_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def repository_info(path: Path) -> dict | None:
    try:
        info = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == REPOSITORY_FORMAT else None


def write_repository(bundle_path, out, *, backend: str = "onnxruntime", max_batch: int | None = None,
                     instances: int = 1, variant: str = DEFAULT_VARIANT, engines: str | None = None,
                     force: bool = False, echo=print) -> Path:
    """Write a Triton model repository for a bundle variant (atomically); returns its path.

    ``max_batch``: the encoder's and pixdeploy_generate's largest dynamic batch; default 8, or with
    ``--backend tensorrt`` the engines' own (a larger one is refused: Triton would refuse to load it)."""
    if backend not in GRAPH_BACKENDS:
        raise PixdeployError(f"unknown backend {backend!r}; choose one of {', '.join(GRAPH_BACKENDS)}")
    if (max_batch is not None and not 1 <= max_batch <= MAX_BATCH_LIMIT) or not 1 <= instances <= MAX_INSTANCES:
        raise PixdeployError(f"--max-batch must be within 1..{MAX_BATCH_LIMIT} and --instances within "
                             f"1..{MAX_INSTANCES}")
    out = Path(out)
    check_replaceable(out, replace=force, what="pixdeploy Triton repository", is_replaceable=is_repository_dir)
    bundle = Bundle(bundle_path)  # checks format and checksums before anything is written
    check_outside(out, bundle.path)
    artifacts, chosen = graph_artifacts(bundle, backend, variant, engines)
    headers = bundle.engine_headers(chosen) if chosen is not None else {}  # checked against the bundle
    if chosen is not None:
        engine_batch = engine_max_batch(headers)
        if max_batch is not None and max_batch > engine_batch:
            raise PixdeployError(f"--max-batch {max_batch} is larger than engine set {chosen.name} accepts "
                                 f"({engine_batch}); rebuild with `pixdeploy build-engine --max-batch {max_batch}` "
                                 "or leave --max-batch out")
        max_batch = max_batch or engine_batch
    max_batch = max_batch or DEFAULT_MAX_BATCH
    kind = GRAPH_BACKENDS[backend]
    with writing(out), staged_dir(out, replace=force, what="pixdeploy Triton repository",
                                  is_replaceable=is_repository_dir, echo=echo) as tmp:
        for g in GRAPHS:
            version = tmp / g / "1"
            version.mkdir(parents=True)
            copy_model_file(artifacts[g], version / kind.model_file, backend)
            if backend == "python":
                shutil.copyfile(MODELS_DIR / "graph_model.py", version / "model.py")
            cfg = graph_config(g, bundle.graphs[g], backend, max_batch, instances)
            if chosen is not None:
                header = headers[g]
                if len(header["profiles"]) > 1:  # the decoder: prefill is profile 0, decode profile 1
                    for group in cfg.instance_group:
                        group.profile.extend(str(i) for i in range(len(header["profiles"])))
                problems = check_engine_config(cfg, header)
                if problems:
                    raise PixdeployError(f"Triton would refuse {g} over engine set {chosen.name}: "
                                         + "; ".join(problems))
            (tmp / g / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
        for name, decoupled in ((STREAM_MODEL, True), (GENERATE_MODEL, False)):
            version = tmp / name / "1"
            (version / "bundle").mkdir(parents=True)
            shutil.copyfile(MODELS_DIR / "generate_model.py", version / "model.py")
            for f in LOOP_FILES:
                shutil.copyfile(bundle.checked(f) if f != "manifest.json" else bundle.path / f, version / "bundle" / f)
            cfg = loop_config(name, decoupled, max_batch, instances)
            (tmp / name / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
        info = {"format": REPOSITORY_FORMAT, "producer": f"pixdeploy {__version__}", "bundle": str(bundle.path),
                "bundle_manifest_sha256": _manifest_digest(bundle), "backend": backend, "variant": variant,
                "engines": chosen.name if chosen else None, "max_batch": max_batch,
                "instances": instances, "models": [*GRAPHS, STREAM_MODEL, GENERATE_MODEL]}
        (tmp / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(repository_readme(backend, variant, chosen, headers), encoding="utf-8")
    for line in server_flags(chosen, headers):
        echo(line)
    return out


def server_flags(chosen, headers: dict | None = None) -> list[str]:
    """What `tritonserver` must be started with to load a TensorRT engine set (tensorrt_backend README). The
    TensorRT and GPU named are the engines' own (their headers, checked against the set's record); every
    argument to paste is quoted for the shell (a plugin name comes from the manifest)."""
    import shlex

    if chosen is None:
        return []
    header = next(iter((headers or {}).values()), None)
    tensorrt = header["tensorrt"] if header else chosen.tensorrt
    cc = header["compute_capability"] if header else chosen.compute_capability
    lines = [f"start tritonserver with TensorRT {tensorrt} (the engines run only there) on a GPU of compute "
             f"capability {cc}"]
    if chosen.plugins:
        plugins = ";".join("/path/to/" + p for p in chosen.plugins)
        lines.append("and load the plugin libraries the engines were built with: "
                     + shlex.quote(f"--backend-config=tensorrt,plugins={plugins}"))
    if chosen.version_compatible:
        lines.append("and allow the version-compatible engines' host code: --backend-config=tensorrt,"
                     "version-compatible=true")
    return [printable(line) for line in lines]


def repository_readme(backend: str, variant: str, chosen, headers: dict | None = None) -> str:
    lines = [f"# Triton model repository for a pixdeploy bundle (variant {printable(variant)}, backend {backend})", "",
             "Models: image_encoder, decoder, pixdeploy (streaming), pixdeploy_generate.", ""]
    lines += [f"- {line}" for line in server_flags(chosen, headers)]
    return "\n".join(lines) + "\n"


def check_outside(out: Path, *inputs: Path) -> None:
    """An output must not land inside an input artifact (nor an input inside the output being replaced)."""
    from pixdeploy.files import check_not_inside

    for artifact in inputs:
        check_not_inside(out, artifact)


def repository_for(bundle_path, repository, *, max_batch: int, instances: int, variant: str = DEFAULT_VARIANT,
                   echo=print) -> Path:
    """The `--backend python` repository `pixdeploy serve` runs: reused when it was written for this
    bundle with these options (a restart serves exactly what ran before), written when absent."""
    repository = Path(repository)
    info = repository_info(repository)
    if info is not None:
        bundle = Bundle(bundle_path)
        wanted = {"bundle_manifest_sha256": _manifest_digest(bundle), "backend": "python", "max_batch": max_batch,
                  "instances": instances, "variant": variant}
        if all(info.get(k) == v for k, v in wanted.items()):
            echo(f"reusing model repository {repository}")
            return repository
        raise PixdeployError(f"{repository} holds a repository for another bundle or other options; remove it, "
                             "or rewrite it with `pixdeploy triton BUNDLE -o REPO --backend python --force`")
    if repository.exists() or repository.is_symlink():  # serve has no --force: never suggest one
        raise PixdeployError(f"--repository {repository} exists and is not a pixdeploy model repository; give a new "
                             "folder (serve writes the repository there)")
    return write_repository(bundle_path, repository, backend="python", max_batch=max_batch, instances=instances,
                            variant=variant, echo=echo)


def _manifest_digest(bundle: Bundle) -> str:
    from pixdeploy.files import sha256

    return sha256(bundle.path / "manifest.json")
