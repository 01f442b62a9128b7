"""Faults a user can run into that need more than one command: previous runs kept, complete runs
reported, data files read as untrusted input, the context limit said out loud, no noise from export."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from hostile_cli import QUICK, run  # noqa: E402
from PIL import Image

from pixdeploy.cli import main
from pixdeploy.data import load_data
from pixdeploy.errors import ContextLimitWarning, DataError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real handwritten digits (scikit-learn), as PNG files."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    paths = []
    for i in range(6):
        p = root / f"{i}.png"
        Image.fromarray((d.images[i] * 15).astype(np.uint8)).resize((24, 24)).save(p)
        paths.append(p)
    return paths


def mixed(tmp_path, images, lines):
    for p in images:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    f = tmp_path / "mixed.txt"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_a_complete_run_resumed_trains_nothing_and_says_so(tmp_path, images):
    data = mixed(tmp_path, images, [f"digit <|image|>{p.name}<|/image|> {i}" for i, p in enumerate(images)])
    out = tmp_path / "run"
    assert run("train", "--data", data, "--out", out, *QUICK).exit_code == 0
    weights = (out / "checkpoint" / "model.safetensors").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    loss = [json.loads(line) for line in metrics.splitlines() if "loss" in json.loads(line)][-1]["loss"]
    again = run("train", "--data", data, "--out", out, "--resume", *QUICK[:1], "1", *QUICK[2:])
    assert again.exit_code == 0, again.output
    assert "run already complete at step 2 (--steps 1)" in again.output
    assert f"step 2: loss {loss:.4f}" in again.output and "0 pixel tokens/s" not in again.output
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == weights
    assert (out / "metrics.jsonl").read_text() == metrics


def test_a_new_run_never_writes_into_a_previous_one(tmp_path, images):
    data = mixed(tmp_path, images, [f"<|image|>{p.name}<|/image|> x" for p in images])
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "model.safetensors").write_bytes(b"1500 steps of work")
    (out / "metrics.jsonl").write_text('{"step": 1500}\n')
    for resume in ([], ["--resume"]):
        result = run("train", "--data", data, "--out", out, *resume, *QUICK)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "meta.json missing" in result.output and "nothing was changed" in result.output
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == b"1500 steps of work"
    assert (out / "metrics.jsonl").read_text() == '{"step": 1500}\n'


def test_stale_checkpoint_temporaries_are_removed_and_reported(tmp_path, images):
    data = mixed(tmp_path, images, [f"<|image|>{p.name}<|/image|> x" for p in images])
    out = tmp_path / "run"
    (out / ".checkpoint.tmp-999999999").mkdir(parents=True)  # a save killed mid-write (no such PID)
    result = run("train", "--data", data, "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    assert "removed 1 temporary file(s) left by an interrupted run: .checkpoint.tmp-999999999" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl"]


def test_a_training_error_is_its_own_line_and_leaves_no_empty_folder(tmp_path, images):
    data = mixed(tmp_path, images, [f"<|image|>{p.name}<|/image|> x" for p in images])
    out = tmp_path / "run"
    result = run("train", "--data", data, "--out", out, *QUICK[:2], "--batch-size", "64", *QUICK[4:])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: 6 training examples cannot fill one batch of 64 per process; lower --batch-size"]
    assert not out.exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", '"nan"'])
def test_set_rejects_non_finite_numbers(tmp_path, value):
    result = run("train", "--data", tmp_path, "--out", tmp_path / "o", "--set", f"norm_eps={value}")
    assert result.exit_code == 1 and "finite number" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_data_lines_that_escape_or_are_malformed_are_skipped_counted_and_named(tmp_path, images):
    outside = tmp_path / "outside.png"
    outside.write_bytes(images[0].read_bytes())
    root = tmp_path / "data"
    root.mkdir()
    lines = ["ok <|image|>0.png<|/image|>", "<|image|>../outside.png<|/image|> escapes",
             f"<|image|>{outside}<|/image|> absolute", "unclosed <|image|>1.png", "stray <|/image|> end",
             "<|image|><|/image|> empty", "plain text is fine"]
    f = mixed(root, images, lines)
    ds = load_data(f)
    assert [ex.origin.rsplit(":", 1)[1] for ex in ds.examples] == ["1", "7"]
    reasons = [s.split(": ", 1)[1] for s in ds.skipped]
    assert len(reasons) == 5 and "5 line(s) skipped" in ds.reading
    assert all("leaves the image root" in r and "--allow-outside-image-root" in r for r in reasons[:2])
    assert reasons[2:] == ["unclosed <|image|> tag", "unopened <|/image|> tag", "empty image reference"]
    allowed = load_data(f, allow_outside_root=True)
    assert [ex.segments[0] for ex in allowed.examples[1:3]] == [root / "../outside.png", outside]


def test_a_folder_is_read_one_way_said_and_refused_when_ambiguous(tmp_path, images):
    for p in images:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "README.txt").write_text("These are digits.\nDo not train on this line.\n")
    ds = load_data(tmp_path)
    assert len(ds.examples) == len(images) and all(isinstance(ex.segments[0], type(images[0])) for ex in ds.examples)
    assert "image folder, 6 images (image-only pretraining); 1 .txt file(s) not used" in ds.reading
    (tmp_path / "captions.txt").write_text("zero <|image|>0.png<|/image|>\n")
    with pytest.raises(DataError, match="is ambiguous: .* 5 image\\(s\\) none of them references"):
        load_data(tmp_path)
    assert len(load_data(tmp_path, kind="images").examples) == 6
    assert len(load_data(tmp_path, kind="mixed").examples) == 3  # README's two lines and the caption


def test_the_context_limit_is_a_warning_line_and_an_api_warning(tiny_bundle, tmp_path, images):
    from pixdeploy.runtime import Pipeline

    pipe = Pipeline.load(tiny_bundle, device="cpu")
    room = pipe.cfg.max_seq_len - len(pipe.prompt_ids())
    with pytest.warns(ContextLimitWarning, match=f"generating at most {room} of the {room + 5} new tokens"):
        pipe.generate(images[0], max_new_tokens=room + 5, stop=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLimitWarning)
        pipe.generate(images[0], max_new_tokens=room)  # exactly what fits: no warning
    result = CliRunner().invoke(main, ["generate", str(tiny_bundle), str(images[0]), "--max-new-tokens",
                                       str(room + 5)])
    assert result.exit_code == 0
    warning_lines = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert warning_lines == [f"warning: the context holds {pipe.cfg.max_seq_len} tokens and the prompt takes "
                             f"{len(pipe.prompt_ids())}: generating at most {room} of the {room + 5} new tokens "
                             "asked for"]


def test_the_api_refuses_non_finite_sampling_settings(tiny_bundle, images):
    from pixdeploy.runtime import Pipeline

    from pixdeploy.errors import PixdeployError

    pipe = Pipeline.load(tiny_bundle, device="cpu")
    for kw in ({"temperature": float("nan")}, {"temperature": float("inf")}, {"top_p": float("nan")}):
        with pytest.raises(PixdeployError, match="temperature|top_p"):
            pipe.generate(images[0], **kw)


def test_inspect_verifies_before_it_reports(tiny_bundle):
    result = run("inspect", tiny_bundle)
    assert result.exit_code == 0
    assert "graphs: verified and loaded (onnxruntime, CPU)" in result.output
    assert "parity (fp32): passed" in result.output


def test_a_run_says_how_it_read_the_data_and_names_what_it_skipped(tmp_path, images):
    data = mixed(tmp_path, images, [f"<|image|>{p.name}<|/image|> {i}" for i, p in enumerate(images)]
                 + ["<|image|>../secret.png<|/image|> escapes", "half <|image|>0.png"])
    result = run("train", "--data", data, "--out", tmp_path / "run", *QUICK)
    assert result.exit_code == 0, result.output
    assert f"data: {data}: mixed text file, 6 examples (images under {tmp_path}); 2 line(s) skipped" in result.output
    assert "skipped 2 unreadable file(s) or unusable line(s):" in result.output
    assert f"  {data}:7: image path '../secret.png' leaves the image root" in result.output
    assert f"  {data}:8: unclosed <|image|> tag" in result.output


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_quantize_never_deletes_a_folder_it_did_not_make_whatever_its_name(tiny_bundle, photo, tmp_path):
    """Folders of the user's in variants/ named exactly like a variant or its staging sibling are kept; a
    leftover that holds the marker quantize writes first is removed and reported."""
    import shutil

    from pixdeploy.runtime.bundle import Bundle, mark_variant_folder

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    variants = bundle / "variants"
    mine = [variants / "fp16-0123456789abcdef", variants / f".fp16-fedcba9876543210.tmp-{dead_pid()}"]
    for folder in mine:
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("my notes, not a variant")
    left = variants / f".fp16-00000000aaaaaaaa.tmp-{dead_pid()}"  # what a killed quantize leaves
    left.mkdir()
    mark_variant_folder(left, "fp16")
    (left / "image_encoder.onnx").write_bytes(b"half written")
    image = tmp_path / "photo.jpg"
    photo.resize((64, 48)).save(image)
    result = run("quantize", bundle, "--precision", "fp16", "--images", image, "--steps", "2")
    assert result.exit_code == 0, result.output
    for folder in mine:
        assert (folder / "notes.txt").read_text() == "my notes, not a variant"
        assert folder.name not in result.output
    assert not left.exists()
    assert f"removed variants/{left.name}, left by an interrupted run" in result.output
    assert "fp16" in Bundle(bundle).variants


def test_openvino_runs_every_variant_quantize_adds(tiny_bundle, photo, tmp_path):
    """fp16's graphs end in a Cast, whose compiled OpenVINO output port carries the Cast's input name too
    (``view_12`` beside ``window_embeddings``); the decoder's inputs likewise. Every variant still runs on
    ``--backend openvino`` through generate, embed and bench, and embeds as onnxruntime does on the same graphs
    (within the fp16 limits of the parity table)."""
    import shutil

    from pixdeploy.parity_limits import THRESHOLDS, compare

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    image = tmp_path / "photo.jpg"
    photo.resize((64, 48)).save(image)
    for precision in (["fp16"], ["int8", "--target", "tensorrt", "--calib-count", "4"]):
        result = run("quantize", bundle, "--precision", *precision, "--images", image, "--steps", "2")
        assert result.exit_code == 0, result.output
    for variant in ("fp16", "int8-tensorrt"):
        result = run("generate", bundle, image, "--variant", variant, "--backend", "openvino", "--max-new-tokens", "2")
        assert result.exit_code == 0 and result.output.startswith(f"{image}\t"), result.output
        vectors = {}
        for backend in ("openvino", "onnxruntime"):
            out = tmp_path / f"{variant}-{backend}.npy"
            result = run("embed", bundle, image, "--variant", variant, "--backend", backend, "-o", out)
            assert result.exit_code == 0, result.output
            vectors[backend] = np.load(out)
        assert compare(vectors["openvino"], vectors["onnxruntime"])["cosine_min"] >= \
            THRESHOLDS["fp16"]["embed_cosine_min"]
        result = run("bench", bundle, "--variant", variant, "--backend", "openvino", "--stage", "encoder",
                     "--batch", "1", "--iters", "5", "--warmup", "1")
        assert result.exit_code == 0, result.output
