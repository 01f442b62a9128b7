"""Bundle -> TensorRT engines, through Polygraphy's loaders: parse -> config -> engine bytes -> header + save.

    pixdeploy build-engine bundle/ [--variant fp32|fp16|int8-tensorrt] [--max-batch 4] [--workspace 2G]
                                   [--timing-cache FILE] [--version-compatible] [--plugins LIB.so] [-o DIR]

Each step is small and testable without TensorRT: optimization profiles are derived from the manifest
(`derive_profiles`), builder options are plain names checked against each TensorRT generation's
documented enums (`build_settings`, tables in `pixdeploy.export.trt_support`), and every refusal happens
before TensorRT is touched (`preflight`). Only `build_graph` calls TensorRT.

Precision is the ONNX's: networks are strongly typed (TensorRT 11 knows no other kind), so no fp16/int8
flag, calibrator or cuBLAS/cuDNN tactic source is ever passed — TensorRT 11 removed them and Polygraphy
raises on them. Enum members are looked up by name at build time and never stored as integers
(TensorRT 11 renumbered them).

Torch-free: on a Jetson, ``pip install "pixdeploy[tensorrt]"`` plus JetPack's TensorRT is enough.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pixdeploy.export.profiles import check_parsable, get_profile
from pixdeploy.export.trt_support import (
    BUILDER_FLAGS,
    NETWORK_FLAGS,
    PARSER_FLAGS,
    PLUGIN_NAMESPACE_FROM,
    parser_table,
)
from pixdeploy.runtime.backends import check_graphs_load
from pixdeploy.runtime.bundle import (
    DEFAULT_VARIANT,
    ENGINES_DIR,
    GRAPHS,
    Bundle,
    EngineSet,
    add_engine_set,
    engine_set_name,
)
from pixdeploy.runtime.engine_header import engine_dir_name, gpu_slug, version_tuple, write_engine
from tqdm import tqdm

from pixdeploy import __version__
from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256, staged_dir

INSTALL_TENSORRT = ("TensorRT is not installed: on x86, pip install tensorrt (NVIDIA's index, "
                    "--extra-index-url https://pypi.nvidia.com); on JetPack, sudo apt install python3-libnvinfer "
                    "and create the virtual environment with --system-site-packages")


# ---- 1. what is built: graph files and optimization profiles (from the manifest alone) ----

@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimization profile: (min, opt, max) per input."""

    name: str
    shapes: dict  # input -> (min, opt, max), each a tuple of ints

    def to_dict(self) -> dict:
        return {"name": self.name, "shapes": {k: [list(s) for s in v] for k, v in self.shapes.items()}}


def derive_profiles(graph: str, signature: dict, cfg, max_batch: int) -> list[ShapeProfile]:
    """Profiles from a manifest graph signature (inputs with symbolic dims).

    - image encoder: one profile, images 1..max_batch (opt at max: embedding is a throughput job);
    - decoder: two profiles in one engine, as TensorRT Edge-LLM does — prefill (tokens 2..context, opt at
      the image prompt's length) and single-token decode (tokens fixed at 1: a static shape, so the
      decode step can be captured as a CUDA graph). Profile 0 is prefill, 1 is decode.
    """
    if max_batch < 1:
        raise PixdeployError(f"--max-batch must be at least 1, got {max_batch}")
    from pixdeploy.sequence import image_prompt

    batch = (1, max_batch, max_batch)
    prompt = min(len(image_prompt(cfg.n_windows, ())), cfg.max_seq_len)
    if graph == "image_encoder":
        variants = {"images": {"images": batch}}
    elif graph == "decoder":
        variants = {"prefill": {"batch": batch, "tokens": (2, prompt, cfg.max_seq_len)},
                    "decode": {"batch": batch, "tokens": (1, 1, 1)}}
    else:
        raise PixdeployError(f"no optimization profiles known for graph {graph!r}")
    profiles = []
    for name, dims in variants.items():
        shapes = {}
        for tensor, spec in signature["inputs"].items():
            per_bound = []
            for bound in range(3):
                shape = []
                for d in spec["shape"]:
                    if isinstance(d, int):
                        shape.append(d)
                    elif d in dims:
                        shape.append(dims[d][bound])
                    else:
                        raise PixdeployError(f"{graph}: input {tensor} has a dim {d!r} no profile covers")
                per_bound.append(tuple(shape))
            shapes[tensor] = tuple(per_bound)
        profiles.append(ShapeProfile(name, shapes))
    return profiles


# ---- 2. how it is built: options by name, gated on the TensorRT generation ----

@dataclass(frozen=True)
class BuildSettings:
    """Everything passed to TensorRT, as enum member names (resolved with getattr at build time)."""

    tensorrt: str
    network_flags: tuple = ()
    parser_flags: tuple = ()
    builder_flags: tuple = ()  # set through CreateConfig's keyword of the same meaning
    config: dict = field(default_factory=dict)  # other CreateConfig keywords (plain values)
    decomposable_attention: bool = False  # let IAttention fall back to matmul-softmax-matmul (10.14+)

    def to_dict(self) -> dict:
        return {"network_flags": list(self.network_flags), "parser_flags": list(self.parser_flags),
                "builder_flags": list(self.builder_flags), "decomposable_attention": self.decomposable_attention}


# CreateConfig keyword -> the BuilderFlag it sets (so the gating test sees every flag a keyword implies).
KEYWORD_FLAGS = {"version_compatible": "VERSION_COMPATIBLE"}


def build_settings(trt_version: str, *, workspace: int | None = None, version_compatible: bool = False,
                   plugins: bool = False) -> BuildSettings:
    major = version_tuple(trt_version)[0]
    if major not in BUILDER_FLAGS:
        raise PixdeployError(f"TensorRT {trt_version} is not supported (pixdeploy knows TensorRT 10 and 11)")
    # Strongly typed: the ONNX types decide precision. Required on 11 (kept but ignored there), opt-in on 10.
    network_flags = ("STRONGLY_TYPED",)
    builder_flags = ("VERSION_COMPATIBLE",) if version_compatible else ()
    # No parser flag, with plugins or without: custom nodes carry plugin_namespace, which routes them to a plugin
    # registered under it (10.7+). ENABLE_PLUGIN_OVERRIDE (10.15+) would send every node, built-ins included, to
    # the plugin registry first, where TensorRT's own ScatterElements plugin rejects reduction="none" (the
    # decoder's KV-cache writes).
    parser_flags = ()
    config = {"profiling_verbosity": "DETAILED"}  # the inspector's layer list shows plugin vs body
    if workspace:
        config["workspace"] = int(workspace)
    return BuildSettings(trt_version, network_flags, parser_flags, builder_flags, config,
                         decomposable_attention=version_tuple(trt_version)[:2] >= (10, 14))


def gating_problems(settings: BuildSettings) -> list[str]:
    """Every option name this TensorRT generation does not document (empty: all of them exist there)."""
    major = version_tuple(settings.tensorrt)[0]
    parser = parser_table(settings.tensorrt).version
    flags = [*settings.builder_flags, *(KEYWORD_FLAGS[k] for k in settings.config if k in KEYWORD_FLAGS)]
    return ([f"BuilderFlag.{n}" for n in flags if n not in BUILDER_FLAGS[major]]
            + [f"NetworkDefinitionCreationFlag.{n}" for n in settings.network_flags if n not in NETWORK_FLAGS[major]]
            + [f"OnnxParserFlag.{n}" for n in settings.parser_flags if n not in PARSER_FLAGS[parser]])


# ---- 3. refusals before TensorRT is touched ----

class NoTensorRT(PixdeployError):
    """TensorRT or a GPU is missing here: `build-engine` can still ask NVIDIA's parser and builder on the CPU
    (`pixdeploy.export.nvidia_check`)."""


def import_tensorrt():
    """The installed TensorRT module, or one line saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise NoTensorRT(INSTALL_TENSORRT) from None
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise PixdeployError('Polygraphy is not installed: pip install "pixdeploy[tensorrt]"') from None
    return tensorrt


def preflight(bundle, trt_version: str, plugins: list, echo=print) -> None:
    """Everything that can be refused without TensorRT: profile vs parser, plugin paths."""
    check_parsable(get_profile(bundle.export_target), trt_version, bundle.path)
    for lib in plugins:
        if not Path(lib).is_file():
            raise PixdeployError(f"plugin library {lib} does not exist")
    if plugins and version_tuple(trt_version)[:2] < PLUGIN_NAMESPACE_FROM:
        echo(f"note: TensorRT {trt_version} always inlines the custom ops' function bodies (plugins can claim "
             "them from 10.7); the plugins are loaded but will not be used for ColorFold/WindowAttention")


# ---- 4. the build itself (needs TensorRT and a GPU) ----

def polygraphy_config(settings: BuildSettings, profiles: list[ShapeProfile], timing_cache: Path | None, trt):
    """A Polygraphy CreateConfig from plain settings; enum members looked up by name on this TensorRT."""
    from polygraphy.backend.trt import CreateConfig, Profile

    trt_profiles = []
    for p in profiles:
        prof = Profile()
        for name, (lo, opt, hi) in p.shapes.items():
            prof.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(prof)
    kwargs = {"profiles": trt_profiles,
              "profiling_verbosity": getattr(trt.ProfilingVerbosity, settings.config["profiling_verbosity"])}
    if "workspace" in settings.config:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: settings.config["workspace"]}
    if "VERSION_COMPATIBLE" in settings.builder_flags:
        kwargs["version_compatible"] = True
    if timing_cache is not None and timing_cache.is_file():
        kwargs["load_timing_cache"] = str(timing_cache)
    return CreateConfig(**kwargs)


def build_graph(onnx_path: Path, settings: BuildSettings, profiles: list[ShapeProfile], timing_cache: Path | None,
                plugins: list, trt) -> tuple[bytes, dict]:
    """Parse, configure, build. Returns the serialized plan and what the network held (plugin layers)."""
    from pixdeploy.runtime.tensorrt_backend import load_plugins
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessNetwork

    load_plugins(plugins, trt)  # before the parse: a plugin claims its nodes while they are imported
    from polygraphy.exception import PolygraphyException

    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True,
                                  flags=[getattr(trt.OnnxParserFlag, f) for f in settings.parser_flags] or None)
    if settings.decomposable_attention:  # IAttention otherwise fails the build when no fused kernel fits
        from polygraphy.backend.trt import SetDecomposableAttentions  # Polygraphy 0.53+

        network = SetDecomposableAttentions(network)
    report = {}

    def record_layers(network):  # Polygraphy passes the parsed network by this keyword
        names = ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
        plugin_types = {getattr(trt.LayerType, n) for n in names if hasattr(trt.LayerType, n)}
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        report["network_layers"] = len(layers)
        report["plugin_layers"] = [f"{lay.name} ({lay.type.name})" for lay in layers if lay.type in plugin_types]

    network = PostprocessNetwork(network, record_layers, name="RecordLayers")
    config = polygraphy_config(settings, profiles, timing_cache, trt)
    try:
        plan = EngineBytesFromNetwork(network, config=config,
                                      save_timing_cache=str(timing_cache) if timing_cache else None)()
    except PolygraphyException as e:
        raise PixdeployError(f"TensorRT could not build {onnx_path}: {str(e).splitlines()[0][:400]}") from None
    return bytes(plan), report


def engine_layers(plan: bytes, trt) -> list:
    """The engine inspector's layer list (profiling verbosity DETAILED at build time)."""
    from polygraphy.backend.trt import engine_from_bytes

    engine = engine_from_bytes(plan)  # our own plan, just built: host code is ours
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return info.get("Layers", []) if isinstance(info, dict) else []


def gpu_identity() -> tuple[str, str]:
    from pixdeploy.runtime.cuda_device import current_gpu

    try:
        return current_gpu()
    except PixdeployError as e:
        raise NoTensorRT(f"no GPU for TensorRT to build on ({e})") from None


def default_timing_cache(gpu: str, trt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version, shared by every bundle built here."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixdeploy" / "timing"
    return root / f"{engine_dir_name(gpu, trt_version)}.cache"


def is_engine_dir(path: Path) -> bool:
    """A folder `build-engine` wrote (what --force may replace): an engine of each graph, each with a pixdeploy
    header. The facts of a build live in those headers and the manifest's record, never in a third place."""
    from pixdeploy.runtime.engine_header import read_header

    try:
        return all(read_header(Path(path) / f"{g}.engine") for g in GRAPHS)
    except (OSError, PixdeployError):
        return False


@dataclass(frozen=True)
class EngineBuildOptions:
    """What `build_engines` takes beyond the bundle: the options of `pixdeploy build-engine`."""

    variant: str | None = None  # default: the bundle's own graphs (fp32)
    max_batch: int = 4  # largest batch of images / sequences the engines accept
    workspace: int | None = None  # bytes; default: TensorRT's
    timing_cache: Path | None = None  # default: one per GPU and TensorRT (`default_timing_cache`)
    version_compatible: bool = False  # engines later TensorRT releases can load
    plugins: tuple = ()  # plugin libraries that may claim the custom ops
    out: Path | None = None  # default: BUNDLE/engines/<gpu>-trt<version>-<variant>/, listed in the manifest
    force: bool = False  # replace an engine folder built before


@dataclass(frozen=True)
class EngineBuild:
    """One build, planned and checked before TensorRT builds anything: what every graph's build shares."""

    bundle: Bundle
    options: EngineBuildOptions
    graph_files: dict  # graph -> the ONNX file it is built from
    precision: str  # the variant's
    settings: BuildSettings
    engine_set: EngineSet  # what the manifest records (the variant, TensorRT, GPU, batch, plugins)
    folder: Path
    timing_cache: Path


def plan_build(bundle_path, options: EngineBuildOptions, echo=print) -> tuple[EngineBuild, object]:
    """Every check and choice of a build, in the order that refuses cheapest first: the variant's graphs, then
    TensorRT, the target and plugins, the GPU, the settings. -> (the build, the TensorRT module)."""
    bundle = Bundle(bundle_path)
    variant = options.variant or DEFAULT_VARIANT
    graph_files = {g: bundle.graph_path(g, variant) for g in GRAPHS}  # refuses an unknown variant
    check_graphs_load(bundle, variant)
    trt = import_tensorrt()
    trt_version = trt.__version__
    preflight(bundle, trt_version, list(options.plugins), echo)
    gpu, cc = gpu_identity()
    name = engine_set_name(gpu_slug(gpu), trt_version, variant)
    timing_cache = Path(options.timing_cache) if options.timing_cache else default_timing_cache(gpu, trt_version)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    settings = build_settings(trt_version, workspace=options.workspace, version_compatible=options.version_compatible,
                              plugins=bool(options.plugins))
    if gating_problems(settings):
        raise PixdeployError(f"TensorRT {trt_version} lacks {', '.join(gating_problems(settings))}")
    engine_set = EngineSet(name, variant, trt_version, gpu, cc, bundle.export_target, options.max_batch,
                           options.version_compatible, tuple(Path(p).name for p in options.plugins),
                           {g: f"{ENGINES_DIR}/{name}/{g}.engine" for g in GRAPHS})
    folder = Path(options.out) if options.out else bundle.path / ENGINES_DIR / name
    return EngineBuild(bundle, options, graph_files, bundle.variant(variant).precision, settings, engine_set,
                       folder, timing_cache), trt


def build_engines(bundle_path, options: EngineBuildOptions = EngineBuildOptions(), *, echo=print) -> Path:
    """Build both graphs of a bundle variant into ``bundle/engines/<gpu>-trt<version>-<variant>/`` (recorded in
    the manifest, so fp32 and int8 sets for one GPU and TensorRT live side by side) or into ``options.out``.
    Returns the folder."""
    build, trt = plan_build(bundle_path, options, echo)
    with staged_dir(build.folder, replace=options.force, what="pixdeploy engine folder", is_replaceable=is_engine_dir,
                    echo=echo) as tmp:
        for graph in tqdm(build.graph_files, desc="building engines", unit="engine", file=sys.stderr):
            build_engine_file(build, graph, tmp, trt, echo)
    if options.out is None:
        add_engine_set(build.bundle.path, build.engine_set, build.folder, echo)
    return build.folder


def build_engine_file(build: EngineBuild, graph: str, folder: Path, trt, echo=print) -> None:
    """``graph``'s engine (header + plan) and its layer list into ``folder``."""
    es = build.engine_set
    profiles = derive_profiles(graph, build.bundle.graphs[graph], build.bundle.config, es.max_batch)
    echo(f"building {graph} of {es.variant} ({', '.join(p.name for p in profiles)}) with TensorRT "
         f"{es.tensorrt} on {es.gpu}")
    onnx_path = build.graph_files[graph]
    plan, network = build_graph(onnx_path, build.settings, profiles, build.timing_cache,
                                list(build.options.plugins), trt)
    layers = engine_layers(plan, trt)
    header = {"tensorrt": es.tensorrt, "gpu": es.gpu, "compute_capability": es.compute_capability, "graph": graph,
              "variant": es.variant, "precision": build.precision, "profiles": [p.to_dict() for p in profiles],
              "max_batch": es.max_batch, "source_sha256": sha256(onnx_path), "producer": f"pixdeploy {__version__}",
              "version_compatible": es.version_compatible, "settings": build.settings.to_dict(),
              "plugins": list(es.plugins), "plugin_layers": network["plugin_layers"]}
    write_engine(folder / f"{graph}.engine", header, plan)
    (folder / f"{graph}.layers.json").write_text(json.dumps(layers, indent=1), encoding="utf-8")
    echo(f"  {graph}: {len(plan) / 1e6:.1f} MB, {len(layers)} engine layers, "
         + (f"plugins ran for {len(network['plugin_layers'])} node(s)" if network["plugin_layers"]
            else "custom ops ran as their function bodies"))
