"""The device-side backends where they can run here: onnxruntime I/O binding (on the CPU provider, the same
code path as CUDA) keeps the KV cache as onnxruntime values between steps and answers exactly as the plain
runner; the TensorRT backend refuses clearly when TensorRT or engines are missing."""

import importlib.util
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from pixdeploy.runtime import Bundle, Pipeline
from pixdeploy.runtime.backends import open_session
from pixdeploy.runtime.onnxruntime_backend import OnnxRuntimeBoundRunner
from pixdeploy.runtime.sampling import Sampling

from pixdeploy.errors import PixdeployError


def test_io_binding_keeps_the_cache_as_device_values_and_answers_the_same(tiny_bundle, photo):
    plain = Pipeline.load(tiny_bundle, device="cpu")
    bound = Pipeline.load(tiny_bundle, device="cpu")
    keep = {p.present for p in bound.bundle.cache_pairs()}  # as the bundle records them
    bound.decoder = OnnxRuntimeBoundRunner(open_session(bound.bundle.graph_path("decoder"), "cpu"), keep)
    emb = plain.embed([photo])
    ids = plain.prompt_ids()
    logits, cache = bound.prefill(emb, ids)
    assert all(isinstance(v, ort.OrtValue) for v in cache.values())  # never copied out as numpy
    np.testing.assert_array_equal(logits, plain.prefill(emb, ids)[0])
    want = np.stack(list(plain.decode_steps(emb, ids, Sampling(max_new_tokens=6, stop=None))), 1)
    got = np.stack(list(bound.decode_steps(emb, ids, Sampling(max_new_tokens=6, stop=None))), 1)
    np.testing.assert_array_equal(got, want)


def test_backend_options_are_checked(tiny_bundle):
    with pytest.raises(PixdeployError, match="backend onnxruntime takes no option allow_host_code"):
        Pipeline.load(tiny_bundle, device="cpu", allow_host_code=True)


def test_onnxruntime_never_takes_its_tensorrt_execution_provider():
    """onnxruntime-gpu lists TensorrtExecutionProvider whether or not TensorRT is installed."""
    from pixdeploy.runtime.backends import execution_providers

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("cuda", gpu) == execution_providers("auto", gpu) == ["CUDAExecutionProvider",
                                                                                    "CPUExecutionProvider"]
    assert execution_providers("cpu", gpu) == ["CPUExecutionProvider"]
    no_cuda = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("auto", no_cuda) == ["CPUExecutionProvider"]


def test_cuda_that_cannot_be_honoured_is_an_error(tiny_bundle):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(PixdeployError, match="no CUDA provider"):
        Pipeline.load(tiny_bundle, device="cuda")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="checks the message without TensorRT")
def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(tiny_bundle):
    with pytest.raises(PixdeployError, match="TensorRT is not installed.*python3-libnvinfer"):
        Pipeline.load(tiny_bundle, backend="tensorrt")


def test_missing_engines_name_the_command_to_run(tiny_bundle, tmp_path, engine_set_writer):
    from pixdeploy.runtime.bundle import select_engine_set

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with pytest.raises(PixdeployError, match=f"no engines for variant fp32, TensorRT 10.3.0.30.*build-engine {b} "
                                             "--variant fp32"):
        select_engine_set(Bundle(b), "fp32", tensorrt="10.3.0.30", compute_capability="8.7")
    name = engine_set_writer(b, gpu="NVIDIA H100", tensorrt="10.15.1.29", cc="9.0")
    with pytest.raises(PixdeployError, match=f"it has: {name}: variant fp32, TensorRT 10.15.1.29 on NVIDIA H100"):
        select_engine_set(Bundle(b), "fp32", tensorrt="10.3.0.30", compute_capability="8.7")


def test_the_polygraphy_cuda_api_the_tensorrt_backend_uses_exists():
    """The TensorRT backend's device memory is Polygraphy's (`DeviceArray`, `DeviceView`, `Stream`): the names and
    signatures it calls are those of the installed Polygraphy (the backend itself needs a GPU to run)."""
    import inspect

    from polygraphy import cuda

    assert {"shape", "dtype"} <= set(inspect.signature(cuda.DeviceArray).parameters)
    assert list(inspect.signature(cuda.DeviceView).parameters) == ["ptr", "shape", "dtype"]
    assert "stream" in inspect.signature(cuda.DeviceArray.copy_from).parameters
    assert "stream" in inspect.signature(cuda.DeviceView.copy_to).parameters
    assert "shape" in inspect.signature(cuda.DeviceArray.view).parameters
    assert callable(cuda.DeviceArray.free) and callable(cuda.Stream) and callable(cuda.wrapper)
