"""The Triton repository writer: configs parse with Triton's own schema and match the graphs' real
signatures; a damaged bundle, an existing folder and a missing TensorRT build are refused clearly."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from pixdeploy.cli import main

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
from google.protobuf import text_format  # noqa: E402

TRITON_TO_NUMPY = {pb2.TYPE_FP32: np.float32, pb2.TYPE_INT64: np.int64, pb2.TYPE_UINT8: np.uint8}
ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}


def read_config(path):
    cfg = pb2.ModelConfig()
    text_format.Parse(path.read_text(), cfg)  # raises on any field Triton's schema does not have
    return cfg


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_configs_follow_triton_schema_and_the_graphs(tiny_bundle, tmp_path, backend):
    repo = tmp_path / "repo"
    res = CliRunner().invoke(main, ["triton", str(tiny_bundle), "-o", str(repo), "--backend", backend,
                                    "--max-batch", "4", "--instances", "3"])
    assert res.exit_code == 0, res.output
    for graph in ("image_encoder", "decoder"):
        cfg = read_config(repo / graph / "config.pbtxt")
        assert cfg.name == graph
        assert (cfg.platform, cfg.backend) == (("onnxruntime_onnx", "") if backend == "onnxruntime" else ("", "python"))
        kind = pb2.ModelInstanceGroup.KIND_GPU if backend == "onnxruntime" else pb2.ModelInstanceGroup.KIND_CPU
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 3)]
        assert cfg.max_batch_size == (4 if graph == "image_encoder" else 0)
        assert cfg.HasField("dynamic_batching") == (graph == "image_encoder")
        # The real signature, read from the ONNX file the model will serve.
        sess = ort.InferenceSession(str(repo / graph / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for declared, actual in ((cfg.input, sess.get_inputs()), (cfg.output, sess.get_outputs())):
            assert [t.name for t in declared] == [a.name for a in actual]
            for t, a in zip(declared, actual):
                assert TRITON_TO_NUMPY[t.data_type] == ORT_TO_NUMPY[a.type], t.name
                full = ([-1] if cfg.max_batch_size else []) + list(t.dims)
                assert full == [d if isinstance(d, int) else -1 for d in a.shape], t.name
        assert (repo / graph / "1" / "model.py").exists() == (backend == "python")
    for name, decoupled in (("pixdeploy", True), ("pixdeploy_generate", False)):
        cfg = read_config(repo / name / "config.pbtxt")
        assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled == decoupled
        assert [i.name for i in cfg.input if not i.optional] == ["IMAGE"]
        assert cfg.max_batch_size == (0 if decoupled else 4)
        assert sorted(p.name for p in (repo / name / "1" / "bundle").iterdir()) == [
            "manifest.json", "text_embeddings.npy", "tokenizer.json"]


def test_tensorrt_without_engines_says_which_command_builds_them(tiny_bundle, tmp_path):
    res = CliRunner().invoke(main, ["triton", str(tiny_bundle), "-o", str(tmp_path / "repo"), "--backend", "tensorrt"])
    assert res.exit_code == 1
    assert "has no engines for variant fp32" in res.output and f"pixdeploy build-engine {tiny_bundle}" in res.output
    assert not (tmp_path / "repo").exists()


def test_existing_folder_needs_force_and_only_a_repository_is_replaced(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    run = lambda *extra: CliRunner().invoke(main, ["triton", str(tiny_bundle), "-o", str(repo), *extra])  # noqa: E731
    assert run().exit_code == 0
    res = run()
    assert res.exit_code == 1 and "pass --force" in res.output
    assert run("--force", "--backend", "python").exit_code == 0
    assert json.loads((repo / "pixdeploy_repository.json").read_text())["backend"] == "python"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    res = CliRunner().invoke(main, ["triton", str(tiny_bundle), "-o", str(mine), "--force"])
    assert res.exit_code == 1 and "refusing to replace" in res.output
    assert (mine / "notes.txt").read_text() == "keep"


def test_damaged_bundle_is_refused_before_anything_is_written(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    data = bytearray((bad / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "decoder.onnx").write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["triton", str(bad), "-o", str(tmp_path / "repo")])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: damaged bundle {bad}: decoder.onnx does not match its checksum"
    assert not (tmp_path / "repo").exists() and not list(tmp_path.glob(".repo.*"))


def test_serve_rejects_a_bad_timeout_and_a_missing_bundle(tmp_path):
    res = CliRunner().invoke(main, ["serve", str(tmp_path), "--timeout", "nan"])
    assert res.exit_code == 2 and "--timeout must be a finite number" in res.output
    res = CliRunner().invoke(main, ["serve", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and f"no bundle at {tmp_path / 'nothing'}" in res.output


def test_bls_outputs_are_asked_for_in_cpu_memory_with_names_the_python_backend_has():
    """A KIND_GPU graph model (onnxruntime, TensorRT) hands BLS outputs back in GPU memory, which as_numpy()
    refuses; the loop asks for CPU memory. The names it uses are checked against the Python-backend stub that
    nvidia-pytriton ships (its strings; the stub is what runs `model.py`), and the loop passes them on every
    request (the serve tests run it against that stub)."""
    import ast
    import importlib.util
    import sys
    from pathlib import Path

    from pixdeploy.export.triton import MODELS_DIR

    source = (MODELS_DIR / "generate_model.py").read_text()
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", "") == "InferenceRequest"]
    assert calls and all(any(k.arg is None for k in c.keywords) for c in calls)  # **kwargs with preferred_memory
    spec = importlib.util.find_spec("pytriton")
    if spec is None:
        pytest.skip("nvidia-pytriton is not installed (pip install 'pixdeploy[serve]')")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = Path(next(iter(spec.submodule_search_locations))) / "tritonserver" / "python_backend_stubs" / version \
        / "triton_python_backend_stub"
    strings = set(stub.read_bytes().replace(b"\0", b"\n").split(b"\n"))
    for name in (b"PreferredMemory", b"TRITONSERVER_MEMORY_CPU", b"preferred_memory", b"is_cpu"):
        assert name in strings, name
