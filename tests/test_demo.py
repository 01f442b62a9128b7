import pytest

from pixdeploy.demo import DemoPlan, run_demo
from pixdeploy.errors import PixdeployError


@pytest.mark.slow
def test_demo_end_to_end_on_a_small_plan(tmp_path):
    """The demo's whole path — data, training, PyTorch reading, export, parity, runtime reading — on a
    plan small enough for CI. (The real plan's numbers are measured by running `pixdeploy demo`.)"""
    lines = []
    # No quantized variants: after 6 steps the model's answers are noise that int8 rounding may flip (the
    # quantize step is tested on its own in tests/export/test_quantize.py; the real plan runs it).
    plan = DemoPlan(n_train=64, n_eval=16, steps=6, batch_size=8, variants=())
    result = run_demo(tmp_path / "demo", echo=lines.append, plan=plan)
    text = "\n".join(lines)
    assert result["total"] == 16 and result["identical"] == 16
    assert result["parity"]["passed"]
    assert "held-out numbers right" in text and "answers identical to PyTorch's" in text
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()
    # A second run refuses to overwrite without --force, and --force replaces only a demo directory.
    with pytest.raises(PixdeployError, match="already exists"):
        run_demo(tmp_path / "demo", echo=lines.append, plan=plan)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep")
    with pytest.raises(PixdeployError, match="not a pixdeploy demo directory"):
        run_demo(tmp_path / "other", force=True, echo=lines.append, plan=plan)
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep"
