"""Engine files: header round trip, and every way a wrong or damaged file is refused before TensorRT sees it."""

import hashlib

import pytest
from pixdeploy.runtime.engine_header import (
    MAGIC,
    EngineError,
    check_runs_here,
    engine_dir_name,
    read_engine,
    read_header,
    version_tuple,
    write_engine,
)

PLAN = hashlib.sha256(b"pixdeploy").digest() * 1000  # stands in for TensorRT's opaque plan bytes


def header(**over):
    base = {"tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7", "graph": "decoder",
            "variant": "fp32", "precision": "fp32",
            "profiles": [{"name": "prefill", "shapes": {"embeds": [[1, 2, 96], [1, 19, 96], [4, 64, 96]]}}],
            "source_sha256": "ab" * 32, "producer": "pixdeploy 0.1.0"}
    return base | over


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "decoder.engine"
    write_engine(path, header(), PLAN)
    return path


def test_round_trip(engine):
    got, plan = read_engine(engine)
    assert plan == PLAN
    assert got["plan_bytes"] == len(PLAN) and got["tensorrt"] == "10.3.0.30" and got["format"] == "pixdeploy-engine"
    assert read_header(engine) == got
    assert engine.read_bytes().startswith(MAGIC)
    assert not list(engine.parent.glob(".*tmp*"))  # written through a temporary, renamed into place


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-10], "truncated"),
    (lambda b: b[:20], "truncated"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "does not match its sha256"),
    (lambda b: b"\x7fELF" + b[4:], "not a pixdeploy engine"),
    (lambda b: MAGIC + (8).to_bytes(4, "little") + b"{not js}" + PLAN, "not JSON"),
    (lambda b: MAGIC + (1 << 30).to_bytes(4, "little"), "header length"),
])
def test_damaged_files_are_refused(engine, damage, message):
    engine.write_bytes(damage(engine.read_bytes()))
    with pytest.raises(EngineError, match=message):
        read_engine(engine)


def test_missing_file(tmp_path):
    with pytest.raises(EngineError, match="no engine at"):
        read_header(tmp_path / "nothing.engine")


def test_engine_for_another_gpu_or_tensorrt_is_refused(engine):
    h, _ = read_engine(engine)
    check_runs_here(h, engine, "10.3.0.30", "8.7")
    with pytest.raises(EngineError, match="compute capability 8.7"):
        check_runs_here(h, engine, "10.3.0.30", "9.0")
    with pytest.raises(EngineError, match="built with TensorRT 10.3.0.30"):
        check_runs_here(h, engine, "10.3.0.26", "8.7")  # a standard plan needs the exact build


def test_version_compatible_engine_runs_on_newer_tensorrt_only(tmp_path):
    path = tmp_path / "vc.engine"
    write_engine(path, header(version_compatible=True, tensorrt="10.15.1.29"), PLAN)
    h = read_header(path)
    check_runs_here(h, path, "11.4.1", "8.7")
    with pytest.raises(EngineError, match="older"):
        check_runs_here(h, path, "10.3.0.30", "8.7")


def test_names_and_versions():
    assert engine_dir_name("NVIDIA H100 80GB HBM3", "10.15.1.29") == "nvidia-h100-80gb-hbm3-trt10.15.1.29"
    assert engine_dir_name("Orin", "10.3.0.30") == "orin-trt10.3.0.30"
    assert version_tuple("10.15.1.post1") == (10, 15, 1)
    assert version_tuple("10.3.0.30") > version_tuple("10.3.0.26")
    with pytest.raises(EngineError):
        version_tuple("unknown")
