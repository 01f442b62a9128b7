import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pixdeploy.runtime import Pipeline
from pixdeploy.runtime.sampling import sample

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.errors import PixdeployError
from pixdeploy.generation import Sampling, generate_text


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.load(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from sklearn.datasets import load_sample_images

    d = tmp_path_factory.mktemp("photos")
    paths = []
    for i, arr in enumerate(load_sample_images().images):
        Image.fromarray(arr).crop((i * 50, 0, 400 + i * 50, 300 - i * 100)).save(d / f"p{i}.jpg")
        paths.append(d / f"p{i}.jpg")
    return paths


def test_runtime_imports_and_runs_without_torch(tiny_bundle, photos):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pixdeploy.runtime import Pipeline\n"
            f"p = Pipeline.load({str(tiny_bundle)!r})\n"
            f"print(p.embed([{str(photos[0])!r}]).shape, repr(p.generate({str(photos[0])!r}, max_new_tokens=3)))\n"
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("(1, 16, 96)")


def test_greedy_generation_equals_pytorch(pipe, tiny_checkpoint, photos):
    ck = Checkpoint(tiny_checkpoint)
    model = ck.load_model()
    rgb, sizes = pipe.preprocess(photos)
    ref = generate_text(model, ck.tokenizer, torch.from_numpy(rgb), torch.from_numpy(sizes),
                        sampling=Sampling(max_new_tokens=20))
    assert pipe.generate_batch(photos, max_new_tokens=20) == ref
    assert pipe.generate(photos[1], max_new_tokens=20) == ref[1]


def test_stream_yields_the_generated_text(pipe, photos):
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    pieces = list(pipe.stream(photos[0], "the number", **kw))
    assert "".join(pieces) == pipe.generate(photos[0], "the number", **kw)
    assert len(pieces) >= 1


def test_embed_accepts_paths_pillow_and_arrays(pipe, photos):
    img = Image.open(photos[0])
    a = pipe.embed([photos[0]])
    b = pipe.embed([img])
    c = pipe.embed([np.asarray(img.convert("RGB"))])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    both = pipe.embed(photos)  # mixed sizes are letterboxed, one batch
    np.testing.assert_allclose(both[:1], a, rtol=1e-5, atol=1e-5)


def test_sampling():
    logits = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample(logits).tolist() == [1, 0]
    rng = np.random.default_rng(0)
    assert sample(logits, temperature=1.0, top_k=1, rng=rng).tolist() == [1, 0]
    draws = [sample(logits, temperature=1.0, top_p=0.5, rng=rng).tolist() for _ in range(20)]
    assert all(d == [1, 0] for d in draws)  # top-p 0.5 keeps only the dominant token
    many = {tuple(sample(logits, temperature=5.0, rng=rng).tolist()) for _ in range(50)}
    assert len(many) > 1


def test_bad_runtime_input_is_one_clear_error(pipe, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(PixdeployError, match="empty"):
        pipe.embed([empty])
    with pytest.raises(PixdeployError, match="not found"):
        pipe.embed([tmp_path / "nope.png"])
    with pytest.raises(PixdeployError, match="context holds 64"):
        pipe.generate(Image.new("RGB", (8, 8)), prompt="1 2 3 4 5 6 7 8 9 " * 10)
    with pytest.raises(PixdeployError, match="letterboxed images must be"):
        pipe.embed_letterboxed(np.zeros((2, 30, 32, 3), np.uint8), np.array([[30, 32], [30, 32]]))
    with pytest.raises(PixdeployError, match="HxWx3 uint8"):  # one ImageError from the shared loader
        pipe.embed([np.zeros((4, 4), np.float32)])
    with pytest.raises(PixdeployError, match="input images: expected"):
        pipe.encoder.infer({"images": np.zeros((1, 32, 32), np.uint8), "sizes": np.ones((1, 2), np.int64)})


def test_cli_runtime_commands(tiny_bundle, tiny_checkpoint, photos, tmp_path):
    from click.testing import CliRunner

    from pixdeploy.cli import main

    r = CliRunner().invoke(main, ["generate", str(tiny_bundle), str(photos[0]), "--max-new-tokens", "3"])
    assert r.exit_code == 0 and str(photos[0]) in r.output
    r = CliRunner().invoke(main, ["embed", str(tiny_bundle), str(photos[0].parent), "-o", str(tmp_path / "e.npy")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "e.npy").shape == (2, 16, 96)
    r = CliRunner().invoke(main, ["inspect", str(tiny_bundle)])
    assert "custom op pixdeploy::ColorFold x1, with its function body" in r.output
    assert "parity (fp32): passed" in r.output
    r = CliRunner().invoke(main, ["parity", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint),
                                  "--images", str(photos[0].parent), "--steps", "8"])
    assert r.exit_code == 0 and "greedy_match" in r.output
    r = CliRunner().invoke(main, ["generate", str(tmp_path), str(photos[0])])
    assert r.exit_code == 1 and "no bundle at" in r.output and "Traceback" not in r.output


def test_the_sessions_of_a_pipeline_block_when_idle_instead_of_spinning(tiny_bundle):
    """The encoder's and the decoder's sessions take turns: neither's threads may spin (and take the cores)
    while the other runs."""
    with Pipeline.load(tiny_bundle, device="cpu") as pipe:
        for runner in (pipe.encoder, pipe.decoder):
            options = runner.session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
