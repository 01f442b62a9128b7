"""Triton model configs for a bundle's models, and what Triton's TensorRT backend would refuse in them.

Every config is built as Triton's own protobuf message (`tritonclient.grpc.model_config_pb2`) from the
bundle's manifest, so names, dtypes and dims are the graphs' and a typo cannot reach the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixdeploy.runtime.bundle import BundleError

from pixdeploy.errors import PixdeployError

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
    # Serves an engine set `build-engine` wrote (its plans without pixdeploy's header) instead of the graphs.
    engines: bool = False
    model_code: str | None = None  # the model.py each graph model runs (in `pixdeploy.export.triton.MODELS_DIR`)


# One row per --backend; dispatch goes through this table.
GRAPH_BACKENDS = {
    "onnxruntime": GraphBackend("onnxruntime_onnx", "", "model.onnx", "KIND_GPU",
                                "Triton's onnxruntime backend runs the ONNX graphs on the GPU"),
    "tensorrt": GraphBackend("tensorrt_plan", "", "model.plan", "KIND_GPU",
                             "Triton's TensorRT backend runs engines built from the graphs", engines=True),
    "python": GraphBackend("", "python", "model.onnx", "KIND_CPU",
                           "onnxruntime inside Python-backend models: runs on a CPU-only Triton",
                           model_code="graph_model.py"),
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
