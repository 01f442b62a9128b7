"""The writers' shared helpers: two writers of one new target, outputs inside inputs, run-folder locks."""

import pytest

from pixdeploy.errors import PixdeployError
from pixdeploy.files import check_not_inside, staged_dir, try_lock


def test_a_second_writer_of_the_same_new_target_does_not_replace_the_first(tmp_path):
    final = tmp_path / "bundle"
    with pytest.raises(PixdeployError, match="was written by another process while this one ran; it is kept"):
        with staged_dir(final) as tmp:
            (tmp / "mine").write_text("mine")
            final.mkdir()  # another export to the same new -o finished first
            (final / "theirs").write_text("theirs")
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # nothing of this writer left behind


def test_outputs_inside_inputs_are_refused_however_the_path_is_spelled(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "link").symlink_to(bundle)
    for out in (bundle / "x.npy", bundle, tmp_path / "link" / "x.npy", bundle / ".." / "bundle" / "y"):
        with pytest.raises(PixdeployError, match="which this command reads"):
            check_not_inside(out, bundle)
    with pytest.raises(PixdeployError, match="holds .*bundle"):
        check_not_inside(tmp_path, bundle)
    check_not_inside(tmp_path / "elsewhere.npy", bundle)


def test_a_held_lock_refuses_instead_of_waiting(tmp_path):
    with try_lock(tmp_path, "busy"):
        with pytest.raises(PixdeployError, match="busy"):
            with try_lock(tmp_path, "busy"):
                pass
    with try_lock(tmp_path, "busy"):  # released
        pass


def test_a_full_disk_is_named_as_such_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """What numpy and safetensors report on a full disk ("6912 requested and 3040 written", a failed write of
    the whole buffer) becomes one line naming the path and the disk; the previous checkpoint is kept."""
    import errno

    import torch

    import pixdeploy.checkpoint as checkpoint
    from pixdeploy.config import preset
    from pixdeploy.files import staged_file
    from pixdeploy.model import PixTokenLM
    from pixdeploy.tokenizer import Tokenizer

    target = tmp_path / "v.npy"
    with pytest.raises(PixdeployError, match=r"cannot write .*v\.npy: no space left on the disk holding it"):
        with staged_file(target):
            raise OSError("6912 requested and 3040 written")
    assert list(tmp_path.iterdir()) == []

    cfg = preset("tiny")
    torch.manual_seed(0)
    state, tok = PixTokenLM(cfg).state_dict(), Tokenizer.image_only()
    checkpoint.save_checkpoint(tmp_path / "run", state, cfg, tok, step=1)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(PixdeployError, match=r"run/checkpoint: no space left on the disk holding it"):
        checkpoint.save_checkpoint(tmp_path / "run", state, cfg, tok, step=2)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # no .checkpoint.tmp-PID left
    assert checkpoint.Checkpoint(tmp_path / "run").step == 1
