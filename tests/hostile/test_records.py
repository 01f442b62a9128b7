"""A manifest edit alone must not change answers: the decoder's KV-cache pairs reordered together with the
decoder's recorded inputs and outputs (every record consistent with every other) still disagree with the graph's
own order, and every command that runs the graphs refuses them, on onnxruntime and OpenVINO alike."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from pixdeploy.cli import main


def reorder_cache_consistently(b):
    """Pair layer 0's key input with layer 1's key output and back, and swap those two outputs in the decoder's
    recorded outputs too: the manifest agrees with itself (each pair is the i-th recorded input with the i-th
    recorded output), and only the graph says otherwise. Fed that way, each layer reads the other's cache."""
    m = json.loads((b / "manifest.json").read_text())
    dec = m["graphs"]["decoder"]
    cache = dec["cache"]
    cache[0]["present"], cache[2]["present"] = cache[2]["present"], cache[0]["present"]
    names = list(dec["outputs"])
    a, c = names.index(cache[0]["present"]), names.index(cache[2]["present"])
    names[a], names[c] = names[c], names[a]
    dec["outputs"] = {n: dec["outputs"][n] for n in names}
    (b / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    reorder_cache_consistently(b)
    return b


@pytest.mark.parametrize("args", [
    ["generate", "{b}", "{img}"],
    ["generate", "{b}", "{img}", "--backend", "openvino"],
    ["embed", "{b}", "{img}", "-o", "{tmp}/v.npy"],
    ["inspect", "{b}"],
    ["triton", "{b}", "-o", "{tmp}/repo", "--backend", "python"],
    ["bench", "{b}", "--stage", "encoder", "--batch", "1", "--iters", "5", "--warmup", "1"],
], ids=["generate", "generate openvino", "embed", "inspect", "triton", "bench"])
def test_cache_pairs_out_of_the_graphs_order_are_refused_by_every_command(bundle, photo, tmp_path, args):
    image = tmp_path / "p.jpg"
    photo.resize((64, 48)).save(image)
    argv = [a.format(b=bundle, img=image, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert re.search(r"decoder\.onnx \(decoder[^)]*\) does not match its manifest entry: it pairs its "
                     r"KV-cache inputs and outputs otherwise than the manifest's cache pairs", lines[0]), lines[0]
    assert not (tmp_path / "repo").exists() and not (tmp_path / "v.npy").exists()
