"""Bounds that protect the machine: options that fork processes or size allocations are checked against what
this machine has (its CPUs, its available memory, estimated before allocating) and against what the arithmetic
survives; a run whose loss stops being a finite number stops with one line and keeps its last good checkpoint.
Every bound a test crosses here is computed from the code's own figures, never from this machine's sizes."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hostile_cli import QUICK, run  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pixdeploy.demo_data import make_demo_set

    root = tmp_path_factory.mktemp("bounds")
    train_txt, _ = make_demo_set(root / "demo", n_train=6, n_eval=2, image_size=32, max_number=9)
    return train_txt


def one_error_line(result, code: int, pattern: str) -> None:
    import re

    lines = result.output.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), result.output


def test_train_workers_past_the_cpus_is_refused_before_any_process_starts(tmp_path, data):
    from pixdeploy.machine import usable_cpus

    cpus = usable_cpus()
    for workers in (cpus + 1, 100000):
        result = run("train", "--data", data, "--out", tmp_path / "run", *QUICK, "--workers", str(workers))
        one_error_line(result, 2, rf"--workers.*{workers} is more than the {cpus} CPU\(s\) this process may use")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, pattern", [
    ("--vocab-size", str(10**9), r"--vocab-size.*not in the range 16<=x<=2097152"),  # the tokenizer aborted
    ("--word-loss-weight", "1e308", r"--word-loss-weight.*not in the range 0<x<=1000"),
    ("--lr", "1e308", r"--lr.*not in the range 0<x<=1"),
])
def test_train_options_past_what_the_arithmetic_survives_are_refused(tmp_path, data, option, value, pattern):
    result = run("train", "--data", data, "--out", tmp_path / "run", *QUICK, option, value)
    one_error_line(result, 2, pattern)
    assert not (tmp_path / "run").exists()


def train_quietly(data, out, tc, resume=False):
    from pixdeploy.config import preset
    from pixdeploy.training import RunOptions, train

    return train(data, out, preset("tiny"), tc, RunOptions(progress=False, resume=resume))


def test_a_non_finite_loss_stops_training_and_writes_no_checkpoint(tmp_path, data):
    from pixdeploy.training import TrainConfig, TrainingDiverged

    tc = TrainConfig(steps=2, batch_size=2, num_workers=0, warmup=1, vocab_size=32, eval_percent=0,
                     word_loss_weight=1e308, ckpt_every=1)
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 1: the loss is (inf|nan) with "
                       r".*--word-loss-weight 1e\+308; no checkpoint was written"):
        train_quietly(data, tmp_path / "run", tc)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_weights_that_stop_being_finite_are_never_saved_and_the_last_good_checkpoint_is_kept(tmp_path, data):
    """A run with a checkpoint at step 1, resumed with an lr no arithmetic survives (the library takes any
    finite lr; the CLI bounds it): step 2's weights are not finite, so step 2 is not saved and the error names
    the step-1 checkpoint, which stays as it was."""
    from dataclasses import replace

    from pixdeploy.checkpoint import Checkpoint
    from pixdeploy.training import TrainConfig, TrainingDiverged

    out = tmp_path / "run"
    tc = TrainConfig(steps=1, batch_size=2, num_workers=0, warmup=1, vocab_size=32, eval_percent=0, ckpt_every=1)
    train_quietly(data, out, tc)
    weights = (out / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 2: the weights are no longer finite "
                       r"numbers with --lr 1e\+308.*the last good checkpoint .*checkpoint \(step 1\) is kept"):
        train_quietly(data, out, replace(tc, steps=3, lr=1e308), resume=True)
    assert Checkpoint(out).step == 1
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == weights


def test_sampling_survives_the_smallest_temperature():
    """Dividing by 1e-308 before shifting made 5e308 = inf and inf - inf = NaN probabilities."""
    from pixdeploy.runtime.sampling import sample

    good_logits = np.array([[5.0, 1.0, -3.0]], np.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warning either
        for t in (1e-308, 5e-324, 1e-30, 1e308):
            ids = sample(good_logits, temperature=t, rng=np.random.default_rng(0))
            assert ids.shape == (1,) and 0 <= ids[0] < 3
        assert sample(good_logits, temperature=1e-308, rng=np.random.default_rng(0))[0] == 0  # greedy in effect


def test_generate_with_the_smallest_temperature_answers(tiny_bundle, photo, tmp_path):
    image = tmp_path / "photo.jpg"
    photo.resize((64, 48)).save(image)
    result = run("generate", tiny_bundle, image, "--temperature", "1e-308", "--max-new-tokens", "4")
    assert result.exit_code == 0 and result.output.startswith(f"{image}\t"), result.output
    greedy = run("generate", tiny_bundle, image, "--max-new-tokens", "4")
    assert result.output == greedy.output


def test_bench_refuses_batches_past_the_memory_this_machine_has(tiny_bundle, tmp_path):
    """The batches are chosen from the code's own estimate so that they need more than what is available now
    (several copies of the largest batch bench takes, 65536); refused in one line before anything is allocated."""
    from pixdeploy.config import ModelConfig
    from pixdeploy.machine import available_memory

    have = available_memory()
    assert have is not None, "Linux exposes MemAvailable"
    cfg = ModelConfig.from_dict(json.loads((tiny_bundle / "manifest.json").read_text())["config"])
    copies = math.ceil(have / (65536 * cfg.inference_bytes_per_image())) + 1
    batches = ",".join(["65536"] * copies)
    result = run("bench", tiny_bundle, "--stage", "encoder", "--batch", batches, "--iters", "5", "--warmup", "1")
    one_error_line(result, 1, r"--batch 65536.* would need about [\d.]+ GiB of memory \(estimated before "
                   r"allocating\); this machine has [\d.]+ GiB available: lower --batch")


def test_embed_refuses_more_images_than_fit_in_memory_before_reading_any(tiny_bundle, photo, tmp_path):
    """As many copies of one image as the code's own estimate says cannot fit in the memory available now."""
    from pixdeploy.config import ModelConfig
    from pixdeploy.machine import available_memory

    image = tmp_path / "p.jpg"
    photo.resize((64, 48)).save(image)
    cfg = ModelConfig.from_dict(json.loads((tiny_bundle / "manifest.json").read_text())["config"])
    count = available_memory() // cfg.inference_bytes_per_image() + 1
    result = run("embed", tiny_bundle, *[image] * count, "-o", tmp_path / "v.npy")
    one_error_line(result, 1, rf"embedding {count} images would need about [\d.]+ GiB of memory \(estimated before "
                   r"allocating\); this machine has [\d.]+ GiB available: embed fewer images at a time")
    assert not (tmp_path / "v.npy").exists()
