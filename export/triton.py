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

Every config is built from the bundle's manifest as Triton's own protobuf message (`pixdeploy.export.triton_config`).
The generation loop is the runtime's `Pipeline`, run over BLS calls to the two graph models.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pixdeploy.export.triton_config import (
    GRAPH_BACKENDS,
    GraphBackend,
    check_engine_config,
    engine_max_batch,
    graph_config,
    loop_config,
    to_pbtxt,
)
from pixdeploy.runtime.backends import check_graphs_load
from pixdeploy.runtime.bundle import (
    DEFAULT_VARIANT,
    EMBEDDINGS,
    GRAPHS,
    MANIFEST,
    TOKENIZER,
    Bundle,
    EngineSet,
    select_engine_set,
)

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
LOOP_FILES = (MANIFEST, TOKENIZER, EMBEDDINGS)


@dataclass(frozen=True)
class RepositoryOptions:
    """What `write_repository` takes beyond the bundle and the folder: the options of `pixdeploy triton`."""

    backend: str = "onnxruntime"  # a key of `GRAPH_BACKENDS`
    # The encoder's and pixdeploy_generate's largest dynamic batch; default `DEFAULT_MAX_BATCH`, or with an
    # engine set the engines' own (a larger one is refused: Triton would refuse to load it).
    max_batch: int | None = None
    instances: int = 1  # model instances of each model
    variant: str = DEFAULT_VARIANT
    engines: str | None = None  # the engine set to serve, when the variant has several (backend tensorrt)
    force: bool = False  # replace a repository pixdeploy wrote

    def check(self) -> None:
        if self.backend not in GRAPH_BACKENDS:
            raise PixdeployError(f"unknown backend {self.backend!r}; choose one of {', '.join(GRAPH_BACKENDS)}")
        if (self.max_batch is not None and not 1 <= self.max_batch <= MAX_BATCH_LIMIT) \
                or not 1 <= self.instances <= MAX_INSTANCES:
            raise PixdeployError(f"--max-batch must be within 1..{MAX_BATCH_LIMIT} and --instances within "
                                 f"1..{MAX_INSTANCES}")


def graph_artifacts(bundle: Bundle, backend: str, variant: str,
                    engines: str | None = None) -> tuple[dict, EngineSet | None]:
    """({graph: the file each graph model serves}, the engine set or None). TensorRT engines come from
    `build-engine`, chosen by the format module's one rule (`select_engine_set`) for the variant."""
    if bundle.decoder_form(variant) is not None:  # the repository's generation loop feeds the plain contract
        raise PixdeployError(f"variant {variant} of {bundle.path} has a decoder written with onnxruntime's fused CPU "
                             "operators, which a Triton repository does not serve; choose another variant")
    serves_engines = GRAPH_BACKENDS[backend].engines
    if engines is not None and not serves_engines:
        raise PixdeployError("--engines names a TensorRT engine set; it is for --backend tensorrt")
    check_graphs_load(bundle, variant)  # for engines, the graphs they were built from: the check generate runs
    if not serves_engines:
        return {g: bundle.graph_path(g, variant) for g in GRAPHS}, None
    chosen = select_engine_set(bundle, variant, name=engines)
    return bundle.engine_files(chosen), chosen


def copy_model_file(source: Path, target: Path, kind: GraphBackend) -> None:
    """Triton's TensorRT backend reads a bare plan: the pixdeploy header of an engine file is left out."""
    if kind.engines:
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


@dataclass(frozen=True)
class RepositoryPlan:
    """A repository resolved and checked against its bundle before anything is written."""

    bundle: Bundle
    options: RepositoryOptions
    artifacts: dict  # graph -> the file its model serves
    engine_set: EngineSet | None  # the engines served, with an engine backend
    headers: dict  # graph -> its engine's header (checked against the bundle); empty without engines
    max_batch: int

    @property
    def kind(self) -> GraphBackend:
        return GRAPH_BACKENDS[self.options.backend]


def plan_repository(bundle_path, out: Path, options: RepositoryOptions) -> RepositoryPlan:
    """Every check before anything is written: the options, the folder written, the bundle, the graphs or the
    engines served, and the batch."""
    options.check()
    check_replaceable(out, replace=options.force, what="pixdeploy Triton repository", is_replaceable=is_repository_dir)
    bundle = Bundle(bundle_path)  # checks format and checksums before anything is written
    check_outside(out, bundle.path)
    artifacts, chosen = graph_artifacts(bundle, options.backend, options.variant, options.engines)
    headers = bundle.engine_headers(chosen) if chosen is not None else {}  # checked against the bundle
    return RepositoryPlan(bundle, options, artifacts, chosen, headers,
                          repository_max_batch(options.max_batch, chosen, headers))


def repository_max_batch(asked: int | None, chosen: EngineSet | None, headers: dict) -> int:
    """``asked``, else the engines' own batch, else `DEFAULT_MAX_BATCH`; more than the engines take is refused."""
    if chosen is None:
        return asked or DEFAULT_MAX_BATCH
    engine_batch = engine_max_batch(headers)
    if asked is not None and asked > engine_batch:
        raise PixdeployError(f"--max-batch {asked} is larger than engine set {chosen.name} accepts "
                             f"({engine_batch}); rebuild with `pixdeploy build-engine --max-batch {asked}` "
                             "or leave --max-batch out")
    return asked or engine_batch


def write_repository(bundle_path, out, options: RepositoryOptions = RepositoryOptions(), *, echo=print) -> Path:
    """Write a Triton model repository for a bundle variant (atomically); returns its path."""
    out = Path(out)
    plan = plan_repository(bundle_path, out, options)
    with writing(out), staged_dir(out, replace=options.force, what="pixdeploy Triton repository",
                                  is_replaceable=is_repository_dir, echo=echo) as tmp:
        for g in GRAPHS:
            write_graph_model(plan, g, tmp)
        for name, decoupled in ((STREAM_MODEL, True), (GENERATE_MODEL, False)):
            write_loop_model(plan, name, decoupled, tmp)
        (tmp / MARKER).write_text(json.dumps(repository_marker(plan), indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(repository_readme(options.backend, options.variant, plan.engine_set,
                                                         plan.headers), encoding="utf-8")
    for line in server_flags(plan.engine_set, plan.headers):
        echo(line)
    return out


def write_graph_model(plan: RepositoryPlan, graph: str, root: Path) -> None:
    """The model of one graph: the file it serves (and its model code), and its config, checked against its
    engine's profiles when it serves one."""
    version = root / graph / "1"
    version.mkdir(parents=True)
    copy_model_file(plan.artifacts[graph], version / plan.kind.model_file, plan.kind)
    if plan.kind.model_code is not None:
        shutil.copyfile(MODELS_DIR / plan.kind.model_code, version / "model.py")
    cfg = graph_config(graph, plan.bundle.graphs[graph], plan.options.backend, plan.max_batch, plan.options.instances)
    if plan.engine_set is not None:
        header = plan.headers[graph]
        if len(header["profiles"]) > 1:  # the decoder: prefill is profile 0, decode profile 1
            for group in cfg.instance_group:
                group.profile.extend(str(i) for i in range(len(header["profiles"])))
        problems = check_engine_config(cfg, header)
        if problems:
            raise PixdeployError(f"Triton would refuse {graph} over engine set {plan.engine_set.name}: "
                                 + "; ".join(problems))
    (root / graph / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")


def write_loop_model(plan: RepositoryPlan, name: str, decoupled: bool, root: Path) -> None:
    """A generation model: the runtime's loop over BLS calls, with the bundle files it reads besides the graphs."""
    version = root / name / "1"
    (version / "bundle").mkdir(parents=True)
    shutil.copyfile(MODELS_DIR / "generate_model.py", version / "model.py")
    for f in LOOP_FILES:  # the manifest is not among the checksummed files: it holds their checksums
        shutil.copyfile(plan.bundle.checked(f) if f != MANIFEST else plan.bundle.path / f, version / "bundle" / f)
    cfg = loop_config(name, decoupled, plan.max_batch, plan.options.instances)
    (root / name / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")


def repository_marker(plan: RepositoryPlan) -> dict:
    """What wrote the repository, and from what (`repository_for` reuses a repository only when it matches)."""
    o = plan.options
    return {"format": REPOSITORY_FORMAT, "producer": f"pixdeploy {__version__}", "bundle": str(plan.bundle.path),
            "bundle_manifest_sha256": _manifest_digest(plan.bundle), "backend": o.backend, "variant": o.variant,
            "engine_set": plan.engine_set.name if plan.engine_set else None, "max_batch": plan.max_batch,
            "instances": o.instances, "models": [*GRAPHS, STREAM_MODEL, GENERATE_MODEL]}


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
    options = RepositoryOptions(backend="python", max_batch=max_batch, instances=instances, variant=variant)
    return write_repository(bundle_path, repository, options, echo=echo)


def _manifest_digest(bundle: Bundle) -> str:
    from pixdeploy.files import sha256

    return sha256(bundle.path / MANIFEST)
