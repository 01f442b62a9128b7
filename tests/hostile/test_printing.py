"""Every command prints user- and artifact-supplied strings escaped (`pixdeploy.cli.say`, through
`pixdeploy.text.printable`): a folder name holding an OSC sequence (which would retitle the terminal), a
BEL, a carriage return or a newline (which would forge a line) reaches the output as typed text, on every
command's success path and error path.

Each command of ``COMMANDS`` runs on inputs and outputs that all live under such a folder; its whole output
must hold no control character other than the newlines between its own lines, and no line may begin with
the text that follows the newline in the folder name.
"""

from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from pixdeploy.cli import main

EVIL = "run\x1b]0;owned\x07\r\nforged: ok"  # OSC 0 (window title), BEL, CR, LF, then a line of its own
# Tab (generate's column separator) and CR (a progress bar redrawing itself) are the commands' own; the
# folder name's CR and LF are checked to be shown escaped instead.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
NAMES_NO_PATH = {"parity"}  # prints its table of figures only


def raw_controls(output: str) -> list[str]:
    """The control characters in ``output`` besides newlines, tabs and carriage returns."""
    return CONTROL.findall(output)


@pytest.fixture(scope="module")
def evil(tiny_bundle, tiny_checkpoint, tmp_path_factory):
    from sklearn.datasets import load_sample_images

    from pixdeploy.demo_data import make_demo_set

    root = tmp_path_factory.mktemp("printing") / EVIL
    root.mkdir()
    shutil.copytree(tiny_bundle, root / "bundle")
    shutil.copytree(tiny_checkpoint, root / "ckpt")
    Image.fromarray(load_sample_images().images[1]).resize((64, 48)).save(root / "photo.jpg")
    data, _ = make_demo_set(root / "data", n_train=6, n_eval=2, image_size=32, max_number=9)
    return root, data


QUICK_TRAIN = ["--steps", "1", "--batch-size", "2", "--workers", "0", "--warmup", "1", "--vocab-size", "32",
               "--eval-percent", "0"]
# name -> argv from (root, data, case folder); each succeeds, and prints the paths it was given
COMMANDS = {
    "train": lambda r, d, c: ["train", "--data", d, "--out", c / EVIL / "run", *QUICK_TRAIN],
    "export": lambda r, d, c: ["export", r / "ckpt", "-o", c / EVIL / "bundle"],
    "inspect": lambda r, d, c: ["inspect", r / "bundle"],
    "generate": lambda r, d, c: ["generate", r / "bundle", r / "photo.jpg", "--max-new-tokens", "2"],
    "generate --stream": lambda r, d, c: ["generate", r / "bundle", r / "photo.jpg", "--max-new-tokens", "2",
                                          "--stream"],
    "embed": lambda r, d, c: ["embed", r / "bundle", r / "photo.jpg", "-o", c / EVIL / "v.npy"],
    "parity": lambda r, d, c: ["parity", r / "bundle", "--checkpoint", r / "ckpt", "--images", r / "photo.jpg",
                               "--steps", "2"],
    "bench": lambda r, d, c: ["bench", r / "bundle", "--stage", "encoder", "--batch", "1", "--iters", "5",
                              "--warmup", "1", "--json", c / EVIL / "b.json"],
    "triton": lambda r, d, c: ["triton", r / "bundle", "-o", c / EVIL / "repo", "--backend", "python"],
    "quantize": lambda r, d, c: ["quantize", c / EVIL / "bundle", "--precision", "fp16", "--checkpoint", r / "ckpt",
                                 "--images", r / "photo.jpg", "--steps", "2"],
    # error paths: the path is named in the one error line
    "generate, image missing": lambda r, d, c: ["generate", r / "bundle", r / "nope.png"],
    "train, out not empty": lambda r, d, c: ["train", "--data", d, "--out", r, *QUICK_TRAIN],
    "build-engine, no bundle": lambda r, d, c: ["build-engine", r / "nope"],
    "serve, no bundle": lambda r, d, c: ["serve", r / "nope"],
    "demo, not a demo folder": lambda r, d, c: ["demo", "--workdir", r, "--force"],
    "bench, no bundle": lambda r, d, c: ["bench", r / "nope"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_prints_paths_escaped(tmp_path, evil, name):
    root, data = evil
    (tmp_path / EVIL).mkdir()
    if name == "quantize":  # it adds a variant: to a copy of the bundle
        shutil.copytree(root / "bundle", tmp_path / EVIL / "bundle")
    args = [str(a) for a in COMMANDS[name](root, data, tmp_path)]
    result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    output = result.output
    assert (result.exit_code == 0) == ("," not in name), output
    assert "Traceback" not in output
    assert raw_controls(output) == [], output
    assert not any(line.startswith("forged") for line in output.splitlines()), output
    if name not in NAMES_NO_PATH:
        assert "run\\x1b]0;owned\\x07\\r\\nforged: ok" in output, output  # the name is shown, as typed
