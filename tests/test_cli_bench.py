"""`pixdeploy bench` from the command line: table, JSON, --compare gating, and one-line errors."""

import json
import subprocess
import sys

from click.testing import CliRunner

from pixdeploy.cli import main

QUICK = ["--stage", "encoder", "--stage", "decode", "--batch", "1", "--iters", "5", "--warmup", "1"]


def run(*args):
    result = CliRunner().invoke(main, ["bench", *map(str, args)])
    assert "Traceback" not in result.output
    return result


def test_bench_writes_a_report_and_compares_against_it(tiny_bundle, tmp_path):
    out = tmp_path / "now.json"
    ok = run(tiny_bundle, *QUICK, "--json", out)
    assert ok.exit_code == 0, ok.output
    assert "encoder b1" in ok.output and "decode b1 ctx 32" in ok.output and f"wrote {out}" in ok.output
    report = json.loads(out.read_text())
    assert [r["stage"] for r in report["rows"]] == ["encoder", "decode"]
    assert not list(tmp_path.glob(".*tmp*"))  # staged, renamed into place

    same = run(tiny_bundle, *QUICK, "--compare", out, "--margin", "400")
    assert same.exit_code == 0, same.output
    assert "before" in same.output and "REGRESSED" not in same.output

    for r in report["rows"]:
        r["p50_ms"] /= 10  # an earlier run ten times as fast
    (tmp_path / "fast.json").write_text(json.dumps(report))
    slower = run(tiny_bundle, *QUICK, "--compare", tmp_path / "fast.json", "--margin", "50")
    assert slower.exit_code == 1
    assert "REGRESSED" in slower.output
    assert slower.output.strip().splitlines()[-1].startswith("error: 2 figure(s) regressed past 50%")


def test_bad_input_is_one_line(tiny_bundle, tmp_path):
    missing = run(tmp_path / "nope")
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: no bundle at {tmp_path / 'nope'} (manifest.json missing)"
    bad_json = tmp_path / "old.json"
    bad_json.write_text("{not json")
    res = run(tiny_bundle, "--compare", bad_json)
    assert res.exit_code == 1 and res.output.startswith(f"error: {bad_json}: not a readable bench report")
    assert run(tiny_bundle, "--compare", tmp_path / "none.json").output.strip() == \
        f"error: {tmp_path / 'none.json'}: no such file"
    assert run(tiny_bundle, "--variant", "fp16").output.strip() == \
        f"error: bundle {tiny_bundle} has no variant 'fp16'; it has: fp32"
    assert run(tiny_bundle, "--backend", "nope").output.strip().startswith("error: unknown backend 'nope'")
    trt = run(tiny_bundle, "--backend", "tensorrt")  # passed through to Pipeline.load; no TensorRT here
    # bench has the two opt-ins its TensorRT refusals name, for --backend tensorrt only, as generate and embed
    for opt_in in (["--allow-host-code"], ["--plugins", tmp_path / "lib.so"]):
        res = run(tiny_bundle, *opt_in)
        assert res.output.strip() == "error: --allow-host-code and --plugins are for --backend tensorrt"
    assert trt.exit_code == 1 and len(trt.output.strip().splitlines()) == 1 and trt.output.startswith("error: ")
    res = run(tiny_bundle, "--batch", "1,x")
    assert res.exit_code == 2 and "'1,x' is not a list of comma-separated integers" in res.output
    res = run(tiny_bundle, "--batch", "100000000")
    assert res.exit_code == 2 and "every value must be within 1..65536" in res.output
    res = run(tiny_bundle, "--json", tiny_bundle / "manifest.json")  # never over the bundle it measures
    assert res.exit_code == 1 and "which this command reads" in res.output
    for margin in ("nan", "inf", "-5"):
        res = run(tiny_bundle, "--margin", margin)
        assert res.exit_code == 2 and "must be a finite number" in res.output
    res = run(tiny_bundle, "--json", tmp_path / "no" / "r.json")
    assert res.exit_code == 1 and "give a file path in an existing folder" in res.output


def test_baseline_without_torch_names_the_extra(tiny_bundle, tiny_checkpoint):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pixdeploy.cli import main\n"
            f"main(['bench', {str(tiny_bundle)!r}, '--stage', 'encoder', '--baseline', {str(tiny_checkpoint)!r}])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == 'error: this command needs torch: pip install "pixdeploy[train]"'
