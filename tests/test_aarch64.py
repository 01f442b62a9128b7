"""scripts/check-aarch64 on the tiny bundle: the runtime installed from the project's wheel with PyPI's
aarch64 wheels, run under qemu-aarch64-static, answers as here. Runs only where an arm64 root has been
made (the script makes it: it needs root and Debian's mirror, so CI leaves it out)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARM64_ROOT = Path(os.environ.get("PIXDEPLOY_ARM64_ROOT")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixdeploy/arm64-bookworm")

pytestmark = [
    pytest.mark.aarch64,
    pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="qemu-aarch64-static not installed"),
    pytest.mark.skipif(not (ARM64_ROOT / "usr/bin/python3").exists(),
                       reason=f"no arm64 root at {ARM64_ROOT} (run scripts/check-aarch64 once as root to make it)"),
]


def test_runtime_on_aarch64_answers_as_here(tiny_bundle, tmp_path):
    from sklearn.datasets import load_sample_images

    paths = []
    for i, arr in enumerate(load_sample_images().images):
        paths.append(tmp_path / f"p{i}.{'jpg' if i else 'png'}")
        Image.fromarray(arr[i * 40 :, : 400 - i * 90]).save(paths[-1])
    env = {**os.environ, "PIXDEPLOY_ARM64_ROOT": str(ARM64_ROOT), "PYTHON": sys.executable}
    res = subprocess.run([str(ROOT / "scripts/check-aarch64"), str(tiny_bundle), *map(str, paths)], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "aarch64 side: aarch64" in res.stdout and "torch imported: False" in res.stdout
    assert "2 answers, identical" in res.stdout
