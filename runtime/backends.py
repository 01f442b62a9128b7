"""Inference backends behind one small interface: ``runner.infer(feed) -> {name: array}``.

`onnxruntime` runs the ONNX graphs (CPU, or CUDA when onnxruntime-gpu is installed). `tensorrt` runs
engines built from the same graphs (`pixdeploy build-engine`) behind the same interface.
"""

from __future__ import annotations

import numpy as np

from pixdeploy.errors import PixdeployError

ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8,
             "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


class OnnxRuntimeRunner:
    def __init__(self, path, device: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PixdeployError("onnxruntime is not installed: pip install 'pixdeploy[onnx]' "
                                 "(or onnxruntime-gpu on a CUDA machine)") from None
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise PixdeployError("device cuda asked for, but this onnxruntime has no CUDA provider "
                                 "(install onnxruntime-gpu)")
        if device == "cpu" or "CUDAExecutionProvider" not in available:
            providers = ["CPUExecutionProvider"]
        else:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            from pixdeploy.runtime.ort_gpu import tensorrt_provider  # TensorRT EP first where TensorRT is present

            providers = tensorrt_provider(available) + providers
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for damaged graphs
            raise PixdeployError(f"cannot load {path}: {str(e).splitlines()[0][:300]}") from None
        self.inputs = {i.name: (ORT_TYPES.get(i.type), i.shape) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def infer(self, feed: dict) -> dict:
        """Run after checking the feed against the graph's declared inputs."""
        self.check_feed(feed)
        return dict(zip(self.output_names, self.session.run(None, feed)))

    def check_feed(self, feed: dict) -> None:
        """Names, dtypes and fixed dims of host arrays (values already on a device are checked by the session)."""
        missing = set(self.inputs) - set(feed)
        extra = set(feed) - set(self.inputs)
        if missing or extra:
            raise PixdeployError(
                f"feed does not match the graph: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, (dtype, shape) in self.inputs.items():
            arr = feed[name]
            if not isinstance(arr, np.ndarray):
                continue
            if arr.dtype != dtype or arr.ndim != len(shape):
                raise PixdeployError(f"input {name}: expected {np.dtype(dtype).name} of rank {len(shape)}, "
                                     f"got {arr.dtype} of shape {arr.shape}")
            for got, want in zip(arr.shape, shape):
                if isinstance(want, int) and got != want:
                    raise PixdeployError(f"input {name}: expected shape {shape}, got {arr.shape}")


def _onnxruntime_runner(path, device: str):
    """On CUDA, I/O binding keeps the KV cache on the GPU between steps (`pixdeploy.runtime.ort_gpu`)."""
    runner = OnnxRuntimeRunner(path, device)
    if runner.providers[0] == "CPUExecutionProvider":
        return runner
    from pixdeploy.runtime.ort_gpu import OnnxRuntimeBoundRunner

    return OnnxRuntimeBoundRunner.from_runner(runner)


def _tensorrt_runner(path, device: str, allow_host_code: bool = False):
    from pixdeploy.runtime.tensorrt_backend import TensorRTRunner  # TensorRT and Polygraphy are optional

    return TensorRTRunner(path, device, allow_host_code=allow_host_code)


BACKENDS = {"onnxruntime": _onnxruntime_runner, "tensorrt": _tensorrt_runner}


def make_runner(backend: str, path, device: str, **options):
    if backend not in BACKENDS:
        raise PixdeployError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    import inspect

    factory = BACKENDS[backend]
    unknown = set(options) - set(inspect.signature(factory).parameters)
    if unknown:
        raise PixdeployError(f"backend {backend} takes no option {', '.join(sorted(unknown))}")
    return factory(path, device, **options)
