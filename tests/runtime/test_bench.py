"""`pixdeploy.runtime.bench`: the report's figures, the eager baseline, comparisons, and clear refusals."""

import copy
import json
import subprocess
import sys

import pytest
from pixdeploy.runtime.bench import EAGER, BenchOptions, compare, interleaved, percentiles, run_bench, table

from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256

QUICK = dict(batches=(1, 2), iters=5, warmup=1, new_tokens=4)


@pytest.fixture(scope="module")
def report(tiny_bundle, tiny_checkpoint):
    from pixdeploy.eager_baseline import eager_baseline

    return run_bench(tiny_bundle, BenchOptions(**QUICK), baseline=eager_baseline(tiny_checkpoint))


def test_every_stage_and_batch_is_timed_against_eager(report, tiny_bundle):
    rows = report["rows"]
    seen = {(r["stage"], r["batch"], r["context"], r["impl"]) for r in rows}
    contexts = report["settings"]["contexts"]
    assert contexts == [32]  # the tiny bundle's 64-token context holds 32 of the default lengths
    for b in (1, 2):
        for impl in ("bundle", EAGER):
            assert {("encoder", b, None, impl), ("prefill", b, None, impl), ("generate", b, None, impl),
                    ("decode", b, 32, impl)} <= seen
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["n"] == 5
        assert r["peak_rss_mb"] > 10
        base = next(e for e in rows if e["impl"] == EAGER and e["stage"] == r["stage"] and e["batch"] == r["batch"])
        assert r["speedup_vs_eager"]["p50"] == pytest.approx(base["p50_ms"] / r["p50_ms"])
    gen = next(r for r in rows if r["stage"] == "generate" and r["batch"] == 2 and r["impl"] == "bundle")
    assert gen["tokens_per_s"] == pytest.approx(2 * 4 / (gen["p50_ms"] / 1e3))
    assert gen["images_per_s"] == pytest.approx(2 / (gen["p50_ms"] / 1e3))
    assert report["bundle"]["manifest_sha256"] == sha256(tiny_bundle / "manifest.json")
    assert report["machine"]["cores"] >= 1 and report["libraries"]["onnxruntime"]
    json.dumps(report)  # the report is plain JSON
    text = table(report)
    assert "onnxruntime/fp32" in text and EAGER in text and "machine:" in text


def test_every_row_names_its_backend_variant_and_precision(report):
    for r in report["rows"]:
        expect = ("torch", "fp32", "fp32") if r["impl"] == EAGER else ("onnxruntime", "fp32", "fp32")
        assert (r["backend"], r["variant"], r["precision"]) == expect
    lines = table(report).splitlines()[1:-1]
    assert lines and all(("onnxruntime/fp32/fp32" in line) != ("torch-eager/fp32" in line) for line in lines)


def test_interleaved_percentiles_come_from_the_samples():
    calls = []
    s = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, iters=4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 4 and len(s["a"]) == len(s["b"]) == 4
    p = percentiles([0.001, 0.002, 0.003, 0.004, 0.100])
    assert p["p50_ms"] == pytest.approx(3.0) and p["p99_ms"] > 90 and p["n"] == 5


def test_compare_flags_a_figure_past_the_margin(report):
    old = copy.deepcopy(report)
    slow = next(r for r in old["rows"] if r["stage"] == "encoder" and r["impl"] == "bundle")
    slow["p50_ms"] /= 2  # the earlier run was twice as fast here
    slow["speedup_vs_eager"]["p50"] *= 2
    changes = compare(report, old, margin=0.2)
    bad = [c for c in changes if c.regressed]
    assert {(c.label, c.figure) for c in bad} == {(f"encoder b{slow['batch']}", "p50"),
                                                 (f"encoder b{slow['batch']}", "speedup")}
    assert not any(c.regressed for c in compare(report, old, margin=1.5))  # within a 150% margin
    old["machine"]["cpu"] = "another CPU"  # latencies from elsewhere are reported, never gated
    assert {c.figure for c in compare(report, old, margin=0.2) if c.regressed} == {"speedup"}
    with pytest.raises(PixdeployError, match="not a pixdeploy bench report"):
        compare(report, {"rows": []}, 0.2)


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "int4"}, "has no variant 'int4'; it has: fp32"),
    ({"backend": "nope"}, "unknown backend 'nope'"),
    ({"stages": ("encoder", "train")}, "unknown stage"),
    ({"contexts": (500,)}, "decode context 500 is outside"),
])
def test_clear_refusals(tiny_bundle, kwargs, message):
    with pytest.raises(PixdeployError, match=message):
        run_bench(tiny_bundle, BenchOptions(**{**QUICK, "stages": ("decode",), **kwargs}))


def test_bench_runs_without_torch(tiny_bundle, photo, tmp_path):
    photo.save(tmp_path / "photo.png")  # a runtime-only install has no scikit-learn sample images
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pixdeploy.runtime.bench import BenchOptions, run_bench\n"
            f"r = run_bench({str(tiny_bundle)!r}, BenchOptions(stages=('encoder', 'decode'), batches=(1,), iters=5, "
            f"warmup=1, images=[{str(tmp_path / 'photo.png')!r}]))\n"
            "assert len(r['rows']) == 2 and 'torch' not in r['libraries']\n"
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
