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


TOP = ("pixdeploy/", "export/", "runtime/", "tests/", "benchmarks/", "scripts/", ".ci/")


def repo_paths(text: str) -> set[str]:
    """Paths into this repository that a text names in backticks (`export/engine.py`, `tests/hostile/`)."""
    found = set()
    for token in re.findall(r"`([^`\s]+)`", text):
        path = token.split(":")[0].rstrip("/.,")
        if path.startswith(TOP) and not re.search(r"[<>{}*]", path):
            found.add(path)
    return found


def dotted_names(text: str) -> set[str]:
    return {t for t in re.findall(r"`(pixdeploy(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", text)}


def test_every_repository_path_and_module_the_readmes_name_exists():
    import importlib

    texts = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "benchmarks").rglob("README.md"))]}
    outputs = tuple(line for line in (ROOT / ".gitignore").read_text().split() if line.endswith("/"))  # written by runs
    missing = [f"{p.name}: {path}" for p, t in texts.items() for path in repo_paths(t)
               if not (ROOT / path).exists() and not (path + "/").startswith(outputs)]
    for p, t in texts.items():
        for name in dotted_names(t):
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(f"{p.name}: {name}")
                break
    assert not missing, missing


def test_the_path_check_sees_a_missing_path():
    assert repo_paths("see `pixdeploy/export/trt_support.py` and `runs/mine`") == {"pixdeploy/export/trt_support.py"}
    assert not (ROOT / "pixdeploy/export/trt_support.py").exists()
