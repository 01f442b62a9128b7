"""The GPU suite's CPU smoke run: every stage that needs no CUDA runs on the tiny preset and reports
numbers that make sense; what needs CUDA says so. (Its timings are not checked: speed is measured by
running the suite, not in tests.)"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_suite(*args, out=None):
    env = {**os.environ, "OUT": str(out)} if out else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu.suite", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    proc = run_suite("--device", "cpu", "--preset", "tiny", "--smoke", out=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_suite_tiny_cpu_smoke.json").read_text())
    return report, proc.stdout


def finite_positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_every_stage_ran_or_says_why(smoke):
    report, stdout = smoke
    assert list(report["stages"]) == ["peaks", "train", "image_block", "window_attention", "decoder", "parity", "onnx"]
    peaks = report["stages"]["peaks"]
    assert finite_positive(peaks["matmul"]["fp32"]["tflops_p50"]) and finite_positive(peaks["copy"]["gbps_p50"])
    assert "needs CUDA" in report["stages"]["image_block"]["skipped"]["cuda_graph"]
    assert "needs CUDA" in report["stages"]["image_block"]["skipped"]["triton"]
    assert "needs CUDA" in report["stages"]["decoder"]["skipped"]["cuda_graph"]
    # The goals are for a GPU run; here each says why it was not measured.
    assert all("not_measured" in g for g in report["goals"].values()), report["goals"]
    # The table comes last, one line per headline number, the goals at its end.
    tail = stdout.strip().splitlines()
    assert tail[1].startswith("stage") and any(line.startswith("onnx") for line in tail)
    assert tail[-1].startswith("goal")


@pytest.mark.slow
def test_training_learns_without_nan(smoke):
    run = smoke[0]["stages"]["train"]["runs"]["fp32"]
    assert run["all_finite"] and run["loss_fell"], run
    assert finite_positive(run["pixel_tokens_per_s"]) and finite_positive(run["tflops"])


@pytest.mark.slow
def test_image_block_and_attention_rows(smoke):
    stages = smoke[0]["stages"]
    rows = stages["image_block"]["rows"]
    assert {(r["batch"], r["variant"]) for r in rows} == {(1, "eager fp32 sdpa"), (4, "eager fp32 sdpa")}
    assert all(finite_positive(r["fraction_of_peak"]) for r in rows)
    wa = stages["window_attention"]
    assert "math" in wa["sdpa_backends_that_ran"]
    for r in wa["rows"]:
        assert "error" in r or r["max_abs_err_vs_fp32"] < 1e-5, r
    assert any(r["variant"] == "sdpa one-query" for r in wa["rows"])


@pytest.mark.slow
def test_decoder_parity_and_onnx_numbers(smoke):
    stages = smoke[0]["stages"]
    dec = stages["decoder"]
    assert {(r["batch"], r["variant"]) for r in dec["rows"]} >= {(1, "decode eager"), (2, "decode eager")}
    assert all(finite_positive(r["per_token_vs_bound"]) for r in dec["rows"] if "per_token_vs_bound" in r)
    for precision in ("bf16", "fp16"):
        par = stages["parity"][precision]
        assert par["all_finite"] and par["embed_cosine_min"] > 0.999, par
        assert 0 <= par["greedy_token_agreement"] <= 1
    enc = stages["onnx"]["graphs"]["image_encoder"]
    assert enc["vs_torch_fp32_cpu"]["max_abs"] < 1e-4
    assert finite_positive(enc["speedup_vs_torch_cpu_p50"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    proc = run_suite("--smoke", "--preset", "tiny", out=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: --device cuda: no CUDA GPU is visible to torch; "
                                   "use --device cpu for the CPU stages")
    assert not list(tmp_path.iterdir())


def test_image_block_flop_count_is_the_designs():
    """DESIGN.md: about 3.7 TFLOP per 224x224 image through the paper's 5 image layers."""
    import importlib.util

    from pixdeploy.config import preset

    spec = importlib.util.spec_from_file_location("gpu_suite_flops", ROOT / "benchmarks" / "gpu" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    per_image = flops.image_block_flops(preset("paper-120m"), 1)
    assert 3.5e12 < per_image < 3.8e12, per_image
    assert flops.image_block_flops(preset("paper-120m"), 8) == 8 * per_image


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("keep me")
    proc = run_suite("--device", "cpu", "--smoke", "--out", str(target))
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: --out {target} is a file; give a folder"
    assert target.read_text() == "keep me"
