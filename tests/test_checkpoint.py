import json
import os

import pytest
import torch

from pixdeploy.checkpoint import Checkpoint, save_checkpoint
from pixdeploy.errors import CheckpointError, PixdeployError
from pixdeploy.model import PixTokenLM
from pixdeploy.tokenizer import Tokenizer


@pytest.fixture
def saved(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = PixTokenLM(tiny_cfg)
    save_checkpoint(tmp_path, model.state_dict(), tiny_cfg, Tokenizer.image_only(), step=3)
    return tmp_path, model


def test_round_trip(saved):
    out, model = saved
    ck = Checkpoint(out)
    assert ck.step == 3 and ck.config == model.cfg
    loaded = ck.load_model()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_a_crash_mid_write_leaves_the_previous_checkpoint_whole(saved, monkeypatch, tiny_cfg):
    out, model = saved

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pixdeploy.checkpoint.save_file", crash)
    with pytest.raises(PixdeployError, match=f"cannot write {out / 'checkpoint'}: disk full"):
        save_checkpoint(out, model.state_dict(), tiny_cfg, Tokenizer.image_only(), step=4)
    assert Checkpoint(out).step == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint.tmp")]  # nothing half-written left


def test_a_crash_between_the_two_renames_is_recovered(saved, monkeypatch, tiny_cfg):
    out, model = saved
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old checkpoint moved aside, new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("pixdeploy.files.os.replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out, model.state_dict(), tiny_cfg, Tokenizer.image_only(), step=4)
    assert not (out / "checkpoint").exists()
    assert Checkpoint(out).step == 3  # found as the pre-swap backup


def test_damaged_or_foreign_checkpoints_are_refused(saved):
    out, _ = saved
    ck = out / "checkpoint"
    weights = ck / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        Checkpoint(out)
    meta = json.loads((ck / "meta.json").read_text())
    (ck / "meta.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a pixdeploy checkpoint"):
        Checkpoint(out)
    (ck / "meta.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="meta.json unreadable"):
        Checkpoint(out)
    with pytest.raises(CheckpointError, match="no pixdeploy checkpoint"):
        Checkpoint(out / "nowhere")


def test_weights_load_without_pickle(saved):
    out, _ = saved
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    names = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert names == ["meta.json", "model.safetensors", "tokenizer.json"]
