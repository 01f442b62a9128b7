"""The reading benchmark's machinery: disjoint splits, determinism from the seed, matched sizes, FLOP
counts, and a seconds-long end-to-end run that writes its JSON, table and plot."""

import json

import numpy as np
import pytest
import torch

from benchmarks.reading import cost, task
from benchmarks.reading.__main__ import main
from benchmarks.reading.run import PLANS
from benchmarks.reading.score import char_accuracy, edit_distance
from benchmarks.reading.vit import PatchViTLM
from pixdeploy.model import PixTokenLM

SMOKE = PLANS["smoke"].task


def test_train_and_heldout_share_no_string():
    fonts = task.available_fonts()
    train = {task.sample("train", i, SMOKE, fonts)[1].text for i in range(400)}
    held = {task.sample("heldout", i, SMOKE, fonts)[1].text for i in range(200)}
    assert len(train) > 300 and len(held) > 150
    assert not train & held
    assert {s for s in held if s.isdigit()} and {s for s in held if s.isalpha()}  # both kinds drawn


def test_samples_follow_from_the_seed_alone():
    fonts = task.available_fonts()
    a_img, a = task.sample("train", 7, SMOKE, fonts)
    task.load_font.cache_clear()
    b_img, b = task.sample("train", 7, SMOKE, fonts)
    assert a == b and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    other = task.TaskConfig(image_size=32, font_sizes=(6, 10), seed=1)
    c_img, _ = task.sample("train", 7, other, fonts)
    assert not np.array_equal(np.asarray(a_img), np.asarray(c_img))


def test_pillow_font_alone_is_enough():
    img, s = task.sample("heldout", 3, SMOKE, [task.PILLOW_FONT])
    assert s.font == task.PILLOW_FONT and img.size == (32, 32)
    assert np.asarray(img).std() > 0  # something was drawn or a photograph shows


def test_cpu_task_is_centred_three_digit_numbers_on_paper_in_one_font():
    tc = PLANS["cpu"].task
    fonts = task.available_fonts()[: tc.fonts]
    plain = 0
    for i in range(60):
        img, s = task.sample("train", i, tc, fonts)
        assert s.kind == "number" and len(s.text) == 3 and s.font == task.PILLOW_FONT
        if s.background != "plain":
            continue
        plain += 1
        a = np.asarray(img).astype(int)
        assert a[0, 0].min() >= 192  # light paper
        ink = np.abs(a - a[0, 0]).sum(-1) > 150
        assert a.sum(-1).min() < 3 * 128  # dark ink (at 6 px no stroke is fully covered, so not ink's own 0-59)
        ys, xs = np.nonzero(ink)
        middle = (tc.image_size - 1) / 2
        jitter = tc.image_size // 10 + 2  # the drawn jitter, plus glyph-box rounding
        assert abs((xs.min() + xs.max()) / 2 - middle) <= jitter and abs((ys.min() + ys.max()) / 2 - middle) <= jitter
    assert plain > 30


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"])
def test_vit_matches_the_pixel_model_in_parameters_and_image_tokens(scale):
    cfg = PLANS[scale].model.replace(text_vocab=262)
    pixel, vit = PixTokenLM(cfg), PatchViTLM(cfg)
    p, v = cost.count_params(pixel)["total"], cost.count_params(vit)["total"]
    assert abs(p - v) / p < 0.05, (p, v)
    if scale == "smoke":
        images = torch.randint(0, 256, (2, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
        sizes = torch.tensor([[cfg.image_size, cfg.image_size], [cfg.image_size, cfg.image_size // 2]])
        assert vit.encode_images(images, sizes).shape == pixel.encode_images(images, sizes).shape


@pytest.mark.parametrize("scale", ["smoke", "cpu"])
def test_counted_flops_agree_with_the_formula(scale):
    cfg = PLANS[scale].model.replace(text_vocab=262)
    counted = {"pixel": cost.encoder_flops(PixTokenLM(cfg), cfg), "vit": cost.encoder_flops(PatchViTLM(cfg), cfg)}
    for kind, flops in counted.items():
        assert flops == pytest.approx(cost.encoder_flops_formula(cfg, kind), rel=0.01), kind
    assert counted["pixel"] > 20 * counted["vit"]  # every pixel a token vs one token per patch


def test_character_accuracy():
    assert edit_distance("kitten", "sitting") == 3
    assert char_accuracy("1234", "1234") == 1.0
    assert char_accuracy("1234", "124") == 0.75
    assert char_accuracy("12", "99999") == 0.0


def test_smoke_run_end_to_end_and_repeatable(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["--scale", "smoke", "--out", str(first), "--no-progress"]) == 0
    assert main(["--scale", "smoke", "--out", str(second), "--no-progress"]) == 0
    a = json.loads((first / "reading.json").read_text())
    b = json.loads((second / "reading.json").read_text())
    assert (first / "reading.png").stat().st_size > 1000 and (first / "reading.md").is_file()
    assert a["strings"]["shared"] == 0 and a["strings"]["heldout"] > 0
    assert set(a["models"]) == {"pixel", "vit"}
    for name in ("pixel", "vit"):
        ra, rb = a["models"][name], b["models"][name]
        assert ra["loss_curve"] == rb["loss_curve"] and ra["readings"] == rb["readings"]
        assert set(ra["by_font_size"]) == {"6", "10"} and set(ra["by_background"]) <= {"plain", "photo"}
        assert ra["encoder_flops_per_image"] == pytest.approx(ra["encoder_flops_formula"], rel=0.01)
        assert len(ra["readings"]) == PLANS["smoke"].n_heldout
    assert a["fonts"][0] == task.PILLOW_FONT
    out = capsys.readouterr().out
    assert "pixel tokens exact / chars" in out


def test_existing_result_is_kept_without_force(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["--scale", "smoke", "--out", str(out), "--force", "--no-progress"]) == 1
    assert (out / "notes.txt").read_text() == "keep"
    assert f"error: {out} exists and is not a reading benchmark result folder" in capsys.readouterr().err
