"""Leftovers never block the next run, and a write that fails for room names the output the user asked for.

- A `train` stopped before its first checkpoint (Ctrl-C here) leaves nothing: a rerun and a --resume both work.
- A file-size limit (``ulimit -f``, as a nearly full disk would stop them) met by train, export, quantize, demo
  and triton is one line naming the target path, and nothing is left behind.
- `serve` killed with -9 leaves its temporary repository; the next `serve` removes it (and only it).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixdeploy.cli import main

QUICK = ["--steps", "2", "--batch-size", "2", "--workers", "0", "--warmup", "1", "--vocab-size", "32",
         "--eval-percent", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pixdeploy.demo_data import make_demo_set

    root = tmp_path_factory.mktemp("leftovers")
    train_txt, _ = make_demo_set(root / "demo", n_train=6, n_eval=2, image_size=32, max_number=9)
    return train_txt


def interrupted_before_first_checkpoint(data, out: Path) -> None:
    """A real run stopped by Ctrl-C at step 1, having logged a metrics record (log_every 1) but not yet
    reached its first checkpoint (ckpt_every 100)."""
    from pixdeploy.config import preset
    from pixdeploy.training import RunOptions, TrainConfig, train

    def ctrl_c(step):
        raise KeyboardInterrupt

    tc = TrainConfig(steps=3, batch_size=2, num_workers=0, warmup=1, vocab_size=32, eval_percent=0, log_every=1,
                     ckpt_every=100)
    with pytest.raises(KeyboardInterrupt):
        train(data, out, preset("tiny"), tc, RunOptions(progress=False, on_step=ctrl_c))


@pytest.mark.parametrize("again", [[], ["--resume"]], ids=["rerun", "resume"])
def test_a_run_stopped_before_its_first_checkpoint_blocks_neither_a_rerun_nor_a_resume(tmp_path, data, again):
    out = tmp_path / "run"
    interrupted_before_first_checkpoint(data, out)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), *QUICK, *again])
    assert result.exit_code == 0, result.output
    if again:
        assert f"no checkpoint in {out} yet: training from step 0" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2]  # this run's only: nothing of the stopped one


# ---- a file-size limit: every command names its target and leaves nothing ----------------------------------

LIMIT = 64 << 10  # below every command's largest file (the tiny model's weights and graphs are hundreds of KB)


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_limited(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixdeploy.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT)))


@pytest.mark.parametrize("name", ["train", "export", "quantize", "demo", "triton"])
def test_a_file_size_limit_is_one_line_naming_the_target_and_leaves_nothing(tmp_path, data, tiny_bundle,
                                                                           tiny_checkpoint, photo, name):
    from pixdeploy.files import sha256

    work = tmp_path / "work"
    work.mkdir()
    bundle = work / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    image = work / "photo.jpg"
    photo.resize((64, 48)).save(image)
    targets = {"train": work / "run", "export": work / "exported", "demo": work / "demo",
               "triton": work / "repo", "quantize": bundle / "variants"}
    args = {"train": ["train", "--data", data, "--out", targets["train"], *QUICK],
            "export": ["export", tiny_checkpoint, "-o", targets["export"]],
            "quantize": ["quantize", bundle, "--precision", "fp16", "--images", image, "--steps", "2"],
            "demo": ["demo", "--workdir", targets["demo"], "--steps", "1"],
            "triton": ["triton", bundle, "-o", targets["triton"], "--backend", "python"]}[name]
    before = snapshot(work)
    manifest = sha256(bundle / "manifest.json")
    proc = run_limited(args, work)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    assert re.search(rf"error: cannot write {re.escape(str(targets[name]))}\S*: a file grew past the largest size "
                     r"allowed \(the file-size limit, ulimit -f, or the file system's\); nothing was replaced",
                     errors[0]), errors[0]
    assert snapshot(work) == before, "something was left behind"
    assert sha256(bundle / "manifest.json") == manifest


# ---- serve killed with -9 ----------------------------------------------------------------------------------

SERVE_TIMEOUT = 180  # serve's own --timeout default: its repository is written before the server even starts


@pytest.mark.triton
def test_the_temporary_repository_of_a_killed_serve_is_removed_by_the_next_start(tmp_path, tiny_bundle):
    pytest.importorskip("tritonclient")
    from pixdeploy.runtime.serve import free_port

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    others = [tmp / "pixdeploy-repo-1-notmine", tmp / f"pixdeploy-repo-{os.getpid()}-running"]
    for p in others:  # no marker / a marker of a process that runs: never removed
        p.mkdir()
    (others[1] / ".pixdeploy-serve").write_text(json.dumps({"format": "pixdeploy-serve-temporary",
                                                            "pid": os.getpid()}))
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "pixdeploy.cli", "serve", str(tiny_bundle), "--port", str(free_port()),
           "--grpc-port", str(free_port()), "--timeout", str(SERVE_TIMEOUT)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVE_TIMEOUT
    left = []
    while not left:
        assert proc.poll() is None and time.monotonic() < deadline, "serve ended before its repository was written"
        left = [p for p in tmp.glob(f"pixdeploy-repo-{proc.pid}-*") if (p / "repository" / "README.md").exists()]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert left[0].is_dir()  # what kill -9 leaves: the repository, and the server's backends if it got that far
    dead = [p for p in tmp.iterdir() if re.match(rf"pixdeploy-(repo|triton)-{proc.pid}-", p.name)]
    again = subprocess.run([sys.executable, "-m", "pixdeploy.cli", "serve", str(tmp_path / "no-bundle")], env=env,
                           capture_output=True, text=True)
    assert again.returncode == 1
    for p in dead:
        assert f"removed {p}, a temporary folder of a pixdeploy command that was killed" in again.stderr
        assert not p.exists()
    assert all(p.is_dir() for p in others)
    assert [p.name for p in tmp.iterdir() if p not in others] == []  # the refused start left nothing either


def test_the_temporary_folders_of_a_killed_quantize_are_swept_by_the_next_and_nothing_else(tmp_path, monkeypatch):
    """quantize works in marked temporary folders (calibration, the int8 schemes, the quantizer's scratch): a
    quantize killed with -9 leaves them, the next quantize removes them, and only them: a folder named alike
    without the marker, one of a process still running, and a symlink stay."""
    import tempfile

    from pixdeploy.export.quantize import quantize_bundle

    from pixdeploy.errors import PixdeployError
    from pixdeploy.files import TEMP_MARKER, marked_temp_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a PID that no longer runs
    left = []
    for prefix in ("pixdeploy-calib-", "pixdeploy-cpu-schemes-", "pixdeploy-q-"):
        folder = marked_temp_dir(prefix)
        dead = folder.with_name(folder.name.replace(f"-{os.getpid()}-", f"-{proc.pid}-"))
        folder.rename(dead)
        (dead / TEMP_MARKER).write_text(json.dumps({"format": "pixdeploy-serve-temporary", "pid": proc.pid}))
        (dead / "decoder.onnx").write_bytes(b"half a graph")
        left.append(dead)
    unmarked = tmp_path / f"pixdeploy-cpu-schemes-{proc.pid}-mine"
    unmarked.mkdir()
    running = marked_temp_dir("pixdeploy-calib-")
    link = tmp_path / f"pixdeploy-q-{proc.pid}-link"
    link.symlink_to(unmarked)
    said = []
    with pytest.raises(PixdeployError, match="no bundle at"):  # the sweep comes first, before the bundle is read
        quantize_bundle(tmp_path / "no-bundle", "int8", "cpu", echo=said.append)
    assert not any(p.exists() for p in left), said
    assert unmarked.is_dir() and running.is_dir() and link.is_symlink()
    assert sorted(said) == sorted(f"removed {p}, a temporary folder of a pixdeploy command that was killed"
                                  for p in left)
