"""The device-side backends where they can run here: onnxruntime I/O binding (on the CPU provider, the same
code path as CUDA) keeps the KV cache as onnxruntime values between steps and answers exactly as the plain
runner; the TensorRT backend refuses clearly when TensorRT or engines are missing."""

import importlib.util
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from pixdeploy.runtime import Pipeline
from pixdeploy.runtime.backends import OnnxRuntimeRunner
from pixdeploy.runtime.ort_gpu import OnnxRuntimeBoundRunner, tensorrt_provider
from pixdeploy.runtime.tensorrt_backend import describe_engines, find_engine

from pixdeploy.errors import PixdeployError


def test_io_binding_keeps_the_cache_as_device_values_and_answers_the_same(tiny_bundle, photo):
    plain = Pipeline.load(tiny_bundle, device="cpu")
    bound = Pipeline.load(tiny_bundle, device="cpu")
    bound.decoder = OnnxRuntimeBoundRunner.from_runner(OnnxRuntimeRunner(bound.bundle.graph_path("decoder"), "cpu"))
    emb = plain.embed([photo])
    ids = plain.prompt_ids()
    logits, cache = bound.prefill(emb, ids)
    assert all(isinstance(v, ort.OrtValue) for v in cache.values())  # never copied out as numpy
    np.testing.assert_array_equal(logits, plain.prefill(emb, ids)[0])
    want = np.stack(list(plain.decode_steps(emb, ids, max_new_tokens=6, stop=None)), 1)
    got = np.stack(list(bound.decode_steps(emb, ids, max_new_tokens=6, stop=None)), 1)
    np.testing.assert_array_equal(got, want)


def test_backend_options_are_checked(tiny_bundle):
    with pytest.raises(PixdeployError, match="backend onnxruntime takes no option allow_host_code"):
        Pipeline.load(tiny_bundle, device="cpu", allow_host_code=True)


def test_tensorrt_execution_provider_only_where_onnxruntime_has_it():
    assert tensorrt_provider(["CUDAExecutionProvider", "CPUExecutionProvider"]) == []


def test_cuda_that_cannot_be_honoured_is_an_error(tiny_bundle):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(PixdeployError, match="no CUDA provider"):
        Pipeline.load(tiny_bundle, device="cuda")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="checks the message without TensorRT")
def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(tiny_bundle):
    with pytest.raises(PixdeployError, match="TensorRT is not installed.*python3-libnvinfer"):
        Pipeline.load(tiny_bundle, backend="tensorrt")


def test_missing_engines_name_the_command_to_run(tiny_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with pytest.raises(PixdeployError, match=f"no engines for Orin with TensorRT 10.3.0.30; .*build-engine {b}"):
        find_engine(b / "decoder.onnx", "10.3.0.30", "Orin")
    other = b / "engines" / "nvidia-h100-trt10.15.1.29"
    other.mkdir(parents=True)
    (other / "engines.json").write_text(json.dumps({"tensorrt": "10.15.1.29", "gpu": "NVIDIA H100", "engines": {
        "decoder": {"file": "decoder.engine", "plugin_layers": []}}}))
    with pytest.raises(PixdeployError, match="it has: nvidia-h100-trt10.15.1.29"):
        find_engine(b / "decoder.onnx", "10.3.0.30", "Orin")
    assert "custom ops ran as their function bodies" in "\n".join(describe_engines(b))
