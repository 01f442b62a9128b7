import numpy as np
import pytest
from PIL import Image

from pixdeploy.config import preset


@pytest.fixture
def tiny_cfg():
    return preset("tiny")


@pytest.fixture
def photo():
    """A real photograph shipped with scikit-learn (not drawn by this project)."""
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0])


@pytest.fixture
def digit_images():
    """Real handwritten digits (scikit-learn's 8x8 set), upscaled to RGB images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [(d.images[i] * (255 / 16)).astype(np.uint8) for i in range(40)]
    return [Image.fromarray(a, "L").resize((24, 24), Image.NEAREST).convert("RGB") for a in imgs], d.target[:40]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A seeded tiny model with a real BPE tokenizer, saved as a checkpoint."""
    import torch

    from pixdeploy.checkpoint import save_checkpoint
    from pixdeploy.model import PixTokenLM
    from pixdeploy.tokenizer import Tokenizer

    tok = Tokenizer.train([str(n) for n in range(100)] + ["the number", "a photo of"], 300)
    cfg = preset("tiny").replace(text_vocab=tok.vocab_size)
    torch.manual_seed(0)
    model = PixTokenLM(cfg)
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(out, model.state_dict(), cfg, tok, step=0)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    from pixdeploy.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    bundle, result = export_bundle(tiny_checkpoint, out, echo=lambda *_: None)
    return bundle.path
