"""A run of the main commands writes its outputs and nothing else: nothing under the user's home folder (no
library telemetry: onnxruntime's device-id database, OpenVINO's statistics), nothing in the temporary folder
it was given, nothing in the folder it runs from.

Each command runs as its own process, as a user runs it, with HOME, TMPDIR and the working folder pointed at
empty folders and every variable that makes a library believe it runs in CI (``CI``, ``TF_BUILD``,
``JENKINS_URL``) or that opts out on pixdeploy's behalf (``ORT_DISABLE_TELEMETRY``) removed: what stays
switched off is switched off by pixdeploy itself.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNSET = ("CI", "TF_BUILD", "JENKINS_URL", "ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
         "XDG_DATA_HOME")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_main_commands_write_nothing_outside_their_outputs(tmp_path, tiny_checkpoint):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    home, tmp, cwd, work = (tmp_path / n for n in ("home", "tmp", "cwd", "work"))
    for d in (home, tmp, cwd, work):
        d.mkdir()
    image = work / "photo.jpg"
    Image.fromarray(load_sample_images().images[0]).resize((64, 48)).save(image)
    checkpoint = work / "run"
    shutil.copytree(tiny_checkpoint, checkpoint)
    bundle = work / "bundle"
    from pixdeploy.demo_data import make_demo_set

    data, _ = make_demo_set(work / "data", n_train=6, n_eval=2, image_size=32, max_number=9)
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    repo_root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))

    commands = [
        ["train", "--data", data, "--out", work / "trained", "--steps", "1", "--batch-size", "2", "--workers", "0",
         "--warmup", "1", "--vocab-size", "32", "--eval-percent", "0"],
        ["export", checkpoint, "-o", bundle],
        ["inspect", bundle],
        ["generate", bundle, image, "--max-new-tokens", "2"],
        ["generate", bundle, image, "--max-new-tokens", "2", "--backend", "openvino"],
        ["embed", bundle, image, "-o", work / "vectors.npy"],
        ["bench", bundle, "--stage", "encoder", "--batch", "1", "--iters", "5", "--warmup", "1",
         "--json", work / "bench.json"],
        ["triton", bundle, "-o", work / "repo", "--backend", "python"],
        ["quantize", bundle, "--precision", "fp16", "--images", image, "--steps", "2"],
    ]
    for args in commands:
        proc = subprocess.run([sys.executable, "-m", "pixdeploy.cli", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert listing(home) == [], (args[0], "wrote under HOME", listing(home))
        # PyTorch's compiler creates its (empty) cache folder when torch's ONNX exporter is imported: the README
        # names it; nothing else may appear
        assert [p for p in listing(tmp) if p != f"torchinductor_{getpass.getuser()}"] == [], \
            (args[0], "left files in TMPDIR", listing(tmp))
        assert listing(cwd) == [], (args[0], "wrote in the working folder", listing(cwd))
    assert sorted(p.name for p in work.iterdir()) == ["bench.json", "bundle", "data", "photo.jpg", "repo", "run",
                                                      "trained", "vectors.npy"]


def test_openvino_is_imported_with_its_telemetry_declined_and_the_environment_restored(tmp_path):
    """In a fresh process with an empty HOME and no CI variable: importing OpenVINO through pixdeploy writes
    nothing, and leaves ``CI`` as it found it (unset)."""
    pytest.importorskip("openvino")
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["HOME"] = str(tmp_path)
    code = ("import os; from pixdeploy.telemetry import import_openvino; ov = import_openvino(); ov.Core(); "
            "assert 'CI' not in os.environ; assert os.environ['ORT_DISABLE_TELEMETRY'] == '1'")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == []
