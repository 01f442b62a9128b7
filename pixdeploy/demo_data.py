"""The built-in demo set: small images of rendered numbers, captioned with the number they show.

Written as real files in the paper's mixed-text format (``<|image|>images/x.png<|/image|>42``), so the
demo runs the same loading path a user's data does. Pillow's built-in font renders the digits; colours,
and position vary so the model has to read, not memorise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def render_number(number: int, rng: np.random.Generator, image_size: int) -> Image.Image:
    # Light paper, dark ink, each in a random tint that stays within one colour level at fold 64.
    bg, fg = rng.integers(192, 256, 3), rng.integers(0, 64, 3)
    img = Image.new("RGB", (image_size, image_size), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(image_size * 0.7))
    text = str(number)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    # Centred, with a few pixels of jitter: the model must read the glyph, not find it.
    jitter = max(1, image_size // 10)
    x = (image_size - (right - left)) // 2 - left + int(rng.integers(-jitter, jitter + 1))
    y = (image_size - (bottom - top)) // 2 - top + int(rng.integers(-jitter, jitter + 1))
    draw.text((int(x), int(y)), text, fill=tuple(int(c) for c in fg), font=font)
    return img


def write_split(root: Path, split: str, count: int, seed: int, image_size: int, max_number: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        number = int(rng.integers(0, max_number + 1))
        rel = f"images/{split}/{i:05d}.png"
        render_number(number, rng, image_size).save(root / rel)
        lines.append(f"<|image|>{rel}<|/image|>{number}")
    text_file = root / f"{split}.txt"
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return text_file


def make_demo_set(root: str | Path, n_train: int, n_eval: int, image_size: int, max_number: int = 99,
                  seed: int = 0) -> tuple[Path, Path]:
    """Write train and held-out splits under ``root``; returns their text files."""
    root = Path(root)
    train = write_split(root, "train", n_train, seed, image_size, max_number)
    held = write_split(root, "eval", n_eval, seed + 1, image_size, max_number)
    return train, held
