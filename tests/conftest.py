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
