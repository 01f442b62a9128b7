"""Bad input from the command line: one clear line, a non-zero exit, no traceback, nothing lost."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from pixdeploy.cli import main
from pixdeploy.demo_data import make_demo_set


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("demo"), n_train=16, n_eval=4, image_size=32, max_number=9)


QUICK = ["--steps", "2", "--batch-size", "4", "--workers", "0", "--warmup", "1", "--vocab-size", "64"]


def test_train_then_refuse_to_overwrite_then_resume(tmp_path, demo_files):
    train_txt, eval_txt = demo_files
    out = tmp_path / "run"
    ok = run("train", "--data", train_txt, "--eval-data", eval_txt, "--out", out, *QUICK)
    assert ok.exit_code == 0, ok.output
    assert "step 2:" in ok.output and "checkpoint:" in ok.output
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    again = run("train", "--data", train_txt, "--out", out, *QUICK)
    assert again.exit_code == 1 and "already holds a checkpoint" in again.output
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    more = run("train", "--data", train_txt, "--eval-data", eval_txt, "--out", out, "--resume",
               *QUICK[:1], "4", *QUICK[2:])
    assert more.exit_code == 0 and "step 4:" in more.output


@pytest.mark.parametrize("make, args, message", [
    (lambda p: None, [], "data path not found"),
    (lambda p: p.mkdir(), [], "no images or text examples"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("<|image|>x.png<|/image|> hi")), [],
     "references a missing image"),
    (lambda p: (p.mkdir(), *[(p / f"{i}.png").write_bytes(b"broken") for i in range(9)]), [], "no readable image"),
    (lambda p: p.mkdir(), ["--set", "window=7"], "does not divide image_size"),
    (lambda p: p.mkdir(), ["--set", "fold=3"], "power of two"),
    (lambda p: p.mkdir(), ["--set", "nonsense"], "expects key=value"),
])
def test_bad_training_input_is_one_clear_error(tmp_path, make, args, message):
    import re

    data = tmp_path / "data"
    make(data)
    result = run("train", "--data", data, "--out", tmp_path / "out", *QUICK, *args)
    assert result.exit_code != 0
    assert re.search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_invalid_preset_is_rejected(tmp_path):
    result = run("train", "--preset", "huge", "--data", tmp_path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "huge" in result.output


def test_corrupted_checkpoint_on_resume_is_refused_and_kept(tmp_path, demo_files):
    train_txt, _ = demo_files
    out = tmp_path / "run"
    assert run("train", "--data", train_txt, "--out", out, *QUICK).exit_code == 0
    weights = out / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run("train", "--data", train_txt, "--out", out, "--resume", *QUICK)
    assert result.exit_code == 1 and "does not match its checksum" in result.output
    assert len(weights.read_bytes()) == 100  # left as found, for the user to inspect


def test_console_script_error_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pixdeploy.cli", "train", "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == f"error: data path not found: {tmp_path / 'nope'}"


def test_a_command_needing_torch_on_a_runtime_only_install_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pixdeploy.cli import main\n"
            f"main(['export', {str(tmp_path)!r}, '-o', {str(tmp_path / 'b')!r}])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == 'error: this command needs torch: pip install "pixdeploy[train]"'


def test_ctrl_c_wrapped_by_a_library_is_still_one_interrupted_line():
    """The ONNX exporter (and others) may turn Ctrl-C into an error of their own: it is still "interrupted"."""
    from pixdeploy.cli import interrupted

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as k:
            raise RuntimeError("exporter failed") from k
    except RuntimeError as e:
        assert interrupted(e)
    assert not interrupted(RuntimeError("a bug"))

    @main.command("raise-wrapped-interrupt", hidden=True)
    def _cmd():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("exporter failed")  # noqa: B904 -- the implicit chain (__context__) is the point

    try:
        res = CliRunner().invoke(main, ["raise-wrapped-interrupt"])
    finally:
        main.commands.pop("raise-wrapped-interrupt")
    assert res.exit_code == 130 and res.output.strip() == "interrupted"
