"""The README cannot rot: its commands exist, CI runs its test command, its Python example runs."""

import re
from pathlib import Path

from PIL import Image

from pixdeploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_every_pixdeploy_command_in_the_readme_exists():
    pattern = r"(?:^|&& |-m )pixdeploy(?:\.cli)? ([a-z][a-z-]*)"
    used = {m for b in blocks("bash") for m in re.findall(pattern, b, flags=re.M)}
    assert used and used <= set(main.commands), used - set(main.commands)


def test_ci_runs_the_readme_test_command():
    install_and_test = [b.strip() for b in blocks("bash") if "pytest" in b]
    assert len(install_and_test) == 1
    install, test = install_and_test[0].split(" && ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci and install.replace("pip install", "pip install --quiet") in ci


def test_python_example_runs(tiny_bundle, tmp_path, monkeypatch, capsys):
    from sklearn.datasets import load_sample_images

    a, b = load_sample_images().images
    monkeypatch.chdir(tmp_path)
    Image.fromarray(a).save("a.jpg")
    Image.fromarray(b).save("b.png")
    (tmp_path / "bundle").symlink_to(tiny_bundle)
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out
