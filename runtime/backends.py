"""Inference backends behind one contract (`pixdeploy.runtime.runner.Runner`), and the registry that opens a bundle
variant's two runners on one of them.

`onnxruntime` runs the ONNX graphs (CPU, or CUDA when onnxruntime-gpu is installed:
`pixdeploy.runtime.onnxruntime_backend`). `tensorrt` runs engines built from the same graphs (`pixdeploy
build-engine`; `pixdeploy.runtime.tensorrt_backend`). `openvino` runs the graphs, inlined, on OpenVINO's CPU plugin at
fp32 or bf16 (`pixdeploy.runtime.openvino_backend`). Backends only open runners; what gates a backend's answers
(OpenVINO's bf16) runs in `Pipeline.open`. `open_runners` builds both runners of a variant; `Pipeline` takes them.
"""

from __future__ import annotations

# The contract and the onnxruntime runners, importable from here as before.
from pixdeploy.runtime.onnxruntime_backend import (  # noqa: F401
    FusedDecoderRunner,
    OnnxRuntimeBoundRunner,
    OnnxRuntimeRunner,
    execution_providers,
    open_session,
)
from pixdeploy.runtime.runner import (  # noqa: F401
    NP_TYPES,
    ORT_TYPES,
    Runner,
    check_signature,
    declared_inputs,
    value_spec,
)

from pixdeploy.errors import PixdeployError


def check_graphs_load(bundle, variant: str) -> bool:
    """Both graphs of ``variant`` load on onnxruntime (CPU) with the signatures the manifest records, as
    `Pipeline.load` loads them: a graph damaged with recomputed checksums, or swapped, is refused in one line
    before a command builds on it. False where onnxruntime is not installed (a TensorRT-only Jetson), which
    then checks nothing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    for runner in _onnxruntime_runners(bundle, variant, "cpu", frozenset()):
        runner.close()
    return True


def _onnxruntime_runners(bundle, variant: str, device: str, keep: frozenset) -> tuple[Runner, Runner]:
    runners = []
    for graph in ("image_encoder", "decoder"):
        path = bundle.graph_path(graph, variant)
        if graph == "decoder" and bundle.decoder_form(variant) is not None:
            if device == "cuda":
                raise PixdeployError(f"variant {variant} of {bundle.path} has a decoder made for onnxruntime on a "
                                     "CPU; use --device cpu, or another variant on the GPU")
            runners.append(FusedDecoderRunner.open_in(bundle, path))
            continue
        runner = OnnxRuntimeRunner.open(path, device, keep if graph == "decoder" else frozenset())
        check_signature(runner, bundle.signatures[graph], f"{path} ({graph} of variant {variant})")
        runners.append(runner)
    return runners[0], runners[1]


def _tensorrt_runners(bundle, variant: str, device: str, keep: frozenset, allow_host_code: bool = False,
                      plugins: tuple = ()) -> tuple[Runner, Runner]:
    from pixdeploy.runtime.tensorrt_backend import open_engines  # TensorRT and Polygraphy are optional

    return open_engines(bundle, variant, device, keep, allow_host_code=allow_host_code, plugins=tuple(plugins))


def _openvino_runners(bundle, variant: str, device: str, keep: frozenset, precision: str = "fp32"
                      ) -> tuple[Runner, Runner]:
    from pixdeploy.runtime.openvino_backend import openvino_runners  # OpenVINO and onnx are optional

    return openvino_runners(bundle, variant, device, keep, precision=precision)


BACKENDS = {"onnxruntime": _onnxruntime_runners, "tensorrt": _tensorrt_runners, "openvino": _openvino_runners}


def open_runners(bundle, backend: str, variant: str, device: str, **options) -> tuple[Runner, Runner]:
    """(image encoder, decoder) runners of ``variant`` on ``backend``; the decoder keeps the bundle's recorded
    cache outputs on the device."""
    if backend not in BACKENDS:
        raise PixdeployError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    import inspect

    factory = BACKENDS[backend]
    unknown = set(options) - set(inspect.signature(factory).parameters)
    if unknown:
        raise PixdeployError(f"backend {backend} takes no option {', '.join(sorted(unknown))}")
    if backend != "onnxruntime" and bundle.decoder_form(variant) is not None:
        raise PixdeployError(f"variant {variant} of {bundle.path} has a decoder written with onnxruntime's fused CPU "
                             f"operators; run it with --backend onnxruntime (or run another variant on {backend})")
    keep = frozenset(p.present for p in bundle.cache_pairs())
    return factory(bundle, variant, device, keep, **options)
