"""Real images no one here drew, shipped inside scikit-learn: two photographs (wide: letterboxed) and
handwritten digits. The default input of the parity gate and of `pixdeploy bench` (torch-free)."""

from __future__ import annotations

import numpy as np

from pixdeploy.errors import PixdeployError


def sample_images() -> list:
    """Two photos and six handwritten digits as Pillow images, so measurements see real pixel statistics."""
    try:
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError:
        raise PixdeployError("no images given and scikit-learn (for its sample photos) is not installed; "
                             "pass --images DIR with a few of your own images") from None
    from PIL import Image

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    digits = load_digits()
    hand = [Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").resize((40, 32))
            for i in range(6)]
    return photos + hand
