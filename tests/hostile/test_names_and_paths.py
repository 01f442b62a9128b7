"""Names and paths as users have them: file names that are not UTF-8 (or hold a newline), a FIFO or a folder named
like an image in mixed training data, a prompt that is not UTF-8, and a bundle's record of its checkpoint read
relative to the bundle, not to wherever a later command runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixdeploy.cli import main

QUICK = ["--steps", "1", "--batch-size", "1", "--workers", "0", "--warmup", "1", "--vocab-size", "32"]


def run(*args):
    result = CliRunner().invoke(main, [a if isinstance(a, str) else os.fspath(a) for a in args])
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


NAMES = [b"caf\xe9.png", b"\xff\xfe.png", b"two\nlines.png"]  # Latin-1, not UTF-8 at all, a newline


@pytest.fixture
def odd_names(tmp_path, photo):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for name in NAMES:
        path = Path(os.fsdecode(bytes(folder) + b"/" + name))
        photo.resize((40, 30)).save(path, "PNG")
        paths.append(path)
    return folder, paths


def test_embed_to_safetensors_keeps_every_image_name_byte_for_byte(tiny_bundle, odd_names, tmp_path):
    from safetensors import safe_open

    folder, paths = odd_names
    out = tmp_path / "v.safetensors"
    result = run("embed", tiny_bundle, folder, "-o", out)
    assert result.exit_code == 0, result.output
    with safe_open(str(out), "np") as f:
        names = json.loads(f.metadata()["images"])
        assert f.get_tensor("window_embeddings").shape[0] == len(NAMES)
    assert sorted(os.fsencode(n) for n in names) == sorted(os.fsencode(p) for p in paths)


def test_train_reads_images_whose_names_are_not_utf8(odd_names, tmp_path):
    folder, _ = odd_names
    # The hold-out hash reads every name (the crash this guards against), whatever the percentage; 0 keeps the
    # run independent of where the test's folder is (a 50% split of three names may hold out all three).
    result = run("train", "--data", folder, "--out", tmp_path / "run", *QUICK, "--eval-percent", "0")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint" / "meta.json").is_file()


def test_a_fifo_or_a_folder_named_like_an_image_in_mixed_data_is_skipped_and_named(tmp_path, photo):
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        photo.resize((32, 32)).save(d / f"{i}.png")
    os.mkfifo(d / "pipe.png")  # opening it to read would block until a writer comes
    (d / "folder.png").mkdir()
    lines = [f"<|image|>{i}.png<|/image|> {i}" for i in range(3)]
    lines += ["<|image|>pipe.png<|/image|> p", "<|image|>folder.png<|/image|> f"]
    (d / "mixed.txt").write_text("\n".join(lines) + "\n")
    result = run("train", "--data", d / "mixed.txt", "--out", tmp_path / "run", *QUICK, "--eval-percent", "0")
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable file(s) or unusable line(s):" in result.output
    assert "mixed.txt:4: image 'pipe.png' is not a regular file (a pipe, socket or device)" in result.output
    assert "mixed.txt:5: image 'folder.png' is a folder, not an image" in result.output


def test_a_prompt_that_is_not_utf8_is_one_line(tiny_bundle, photo, tmp_path):
    from pixdeploy.runtime import Pipeline

    from pixdeploy.errors import PixdeployError

    image = tmp_path / "p.jpg"
    photo.resize((64, 48)).save(image)
    prompt = os.fsdecode(b"a photo \xff")  # what a shell hands Python for bytes that are not UTF-8
    result = run("generate", tiny_bundle, image, "--prompt", prompt)
    assert result.exit_code == 1
    assert result.output.strip() == "error: --prompt is not valid UTF-8 text (byte 0xff at character 8)"
    with Pipeline.load(tiny_bundle, device="cpu") as pipe, pytest.raises(PixdeployError, match="not valid UTF-8"):
        pipe.generate(image, prompt, max_new_tokens=2)


def test_a_relative_checkpoint_path_in_a_bundle_is_read_relative_to_the_bundle(tiny_bundle, tiny_checkpoint, photo,
                                                                               tmp_path, monkeypatch):
    """The bundle records ``../run`` (relative, as an older export wrote the path typed); a command run from
    another folder, which holds a same-named ``../run`` of another model, must use the bundle's own."""
    from pixdeploy.runtime import Bundle

    project = tmp_path / "project"
    shutil.copytree(tiny_bundle, project / "bundle")
    shutil.copytree(tiny_checkpoint, project / "run")
    manifest = json.loads((project / "bundle" / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = "../run"
    (project / "bundle" / "manifest.json").write_text(json.dumps(manifest))
    decoy = tmp_path / "run"  # ../run seen from tmp_path / "elsewhere"
    shutil.copytree(tiny_checkpoint, decoy)
    meta = json.loads((decoy / "checkpoint" / "meta.json").read_text())
    meta["config"]["mlp_hidden"] = 128  # another model
    (decoy / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    image = tmp_path / "p.jpg"
    photo.resize((64, 48)).save(image)

    assert Path(Bundle(project / "bundle").source_checkpoint) == project / "run"
    result = run("quantize", project / "bundle", "--precision", "fp16", "--images", image, "--steps", "2")
    assert result.exit_code == 0, result.output
    # and an export records the checkpoint as an absolute path, whatever was typed
    monkeypatch.chdir(project)
    result = run("export", "run", "-o", "fresh")
    assert result.exit_code == 0, result.output
    recorded = json.loads((project / "fresh" / "manifest.json").read_text())["source"]["checkpoint"]
    assert recorded == str(project / "run" / "checkpoint")
