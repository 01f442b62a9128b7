import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.demo_data import make_demo_set
from pixdeploy.training import RunOptions, TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_set(root, n_train=48, n_eval=8, image_size=32, max_number=9)


TC = TrainConfig(steps=8, batch_size=4, grad_accum=2, warmup=2, eval_every=4, ckpt_every=4, log_every=1, num_workers=0,
                 lr=2e-3, vocab_size=64, eval_batches=2)


def test_lr_schedule_warms_up_then_decays():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1) and lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(10, tc) == pytest.approx(1.0) and lr_at(100, tc) == pytest.approx(0.1)
    assert lr_at(55, tc) == pytest.approx(0.55)


def test_training_lowers_the_loss_and_writes_metrics(tmp_path, demo_files, tiny_cfg):
    train_txt, eval_txt = demo_files
    summary = train(train_txt, tmp_path, tiny_cfg, TC, RunOptions(eval_data=eval_txt, progress=False))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert {"eval_pixel_loss", "eval_word_loss"} <= set(summary)
    ck = Checkpoint(tmp_path)
    assert ck.step == 8 and ck.config.text_vocab == ck.tokenizer.vocab_size > 6


def test_an_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, demo_files, tiny_cfg):
    """8 steps of 2 micro-batches cross an epoch (12 batches of 4): resuming must find the same batches."""
    train_txt, eval_txt = demo_files
    quiet = RunOptions(eval_data=eval_txt, progress=False)
    whole = train(train_txt, tmp_path / "whole", tiny_cfg, TC, quiet)

    def kill_at_6(step):
        if step == 6:  # after the step-4 checkpoint, before the next
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(train_txt, tmp_path / "cut", tiny_cfg, TC, replace(quiet, on_step=kill_at_6))
    assert Checkpoint(tmp_path / "cut").step == 4
    resumed = train(train_txt, tmp_path / "cut", tiny_cfg, TC, replace(quiet, resume=True))
    assert resumed["step"] == whole["step"] == 8
    for key in ("loss", "eval_pixel_loss", "eval_word_loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-5), key
    a, b = Checkpoint(tmp_path / "whole").model_state(), Checkpoint(tmp_path / "cut").model_state()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path, demo_files):
    train_txt, eval_txt = demo_files
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "pixdeploy.cli", "train", "--preset", "tiny", "--data", str(train_txt), "--eval-data",
           str(eval_txt), "--out", str(tmp_path / "ddp"), "--steps", "4", "--batch-size", "2", "--workers", "1",
           "--warmup", "1", "--eval-every", "2", "--ckpt-every", "2", "--vocab-size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step 4:" in res.stdout and "2 process(es)" in res.stdout
    assert Checkpoint(tmp_path / "ddp").step == 4
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [4]  # rank 0 alone writes metrics
    assert [r["step"] for r in lines if "eval_pixel_loss" in r] == [2, 4]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, demo_files):
    """A real kill -9 at an arbitrary moment (possibly mid-checkpoint): the resumed run ends where an
    uninterrupted run ends."""
    import signal
    import time

    train_txt, eval_txt = demo_files
    args = ["--data", str(train_txt), "--eval-data", str(eval_txt), "--steps", "40", "--batch-size", "4",
            "--workers", "0", "--warmup", "2", "--ckpt-every", "1", "--eval-every", "20", "--vocab-size", "64"]
    cli = [sys.executable, "-m", "pixdeploy.cli", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*cli, *args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]

    proc = subprocess.Popen([*cli, *args, "--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "cut" / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere in the middle of the run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = Checkpoint(tmp_path / "cut").step
    assert 0 < killed_at < 40, "the run must be killed part-way"
    resumed = subprocess.run([*cli, *args, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = Checkpoint(tmp_path / "whole"), Checkpoint(tmp_path / "cut")
    assert a.step == b.step == 40
    wa, wb = a.model_state(), b.model_state()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "cut").glob(".checkpoint.tmp-*"))
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40]  # none logged twice


def test_a_second_run_in_the_same_folder_is_refused_while_one_trains(tmp_path, demo_files, tiny_cfg):
    """Two `train --resume` on one run would both write checkpoints and metrics: the second is refused."""
    from pixdeploy.errors import PixdeployError

    train_txt, eval_txt = demo_files
    run = tmp_path / "run"
    quiet = RunOptions(eval_data=eval_txt, progress=False)
    refused = []

    def second_run(step):
        if step == 5:  # a checkpoint exists (step 4): a resume passes every check but the lock
            with pytest.raises(PixdeployError, match=f"another pixdeploy process is training in {run}") as e:
                train(train_txt, run, tiny_cfg, TC, replace(quiet, resume=True))
            refused.append(str(e.value))

    summary = train(train_txt, run, tiny_cfg, TC, replace(quiet, on_step=second_run))
    assert refused and summary["step"] == 8
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 9))  # one run's rows, none twice


def test_an_empty_out_is_refused(demo_files, tiny_cfg, tmp_path, monkeypatch):
    from pixdeploy.errors import PixdeployError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PixdeployError, match="--out must name a run folder"):
        train(demo_files[0], "", tiny_cfg, TC, RunOptions(progress=False))
    assert list(tmp_path.iterdir()) == []
