"""The reading task: small rendered text on plain backgrounds and on crops of real photographs.

Each image shows one string — a number of 3-6 digits or a short English word — at one font size
(the em height in pixels, 5 to 14), in one of the fonts found on this machine, at a random position;
its caption is the string. Everything follows from the seed: sample ``i`` of a split is drawn from
``default_rng([seed, split, i])``, so any sample can be regenerated alone and the images are written one
at a time (nothing is held in memory). Train and held-out strings are disjoint by construction: a string
belongs to the held-out split when a seeded hash of it says so, and each split draws only its own strings.

`TaskConfig` can narrow it (number lengths, centred placement, light paper only, fewer fonts): the
`cpu` plan does, because at that budget neither model learns the full task (benchmarks/reading/README.md).

Words come from Python's own documentation corpus (``pydoc_data.topics``); photographs from the sample
images that ship with scikit-learn. Fonts are those found on the machine (Pillow's own always), so a
run records which it used.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SPLITS = ("train", "heldout")
BACKGROUNDS = ("plain", "photo")
# Debian font packages whose files are used when present (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf).
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
)
PILLOW_FONT = "pillow-default"  # Pillow's built-in scalable font (Aileron), always present


@dataclass(frozen=True)
class TaskConfig:
    image_size: int = 64
    font_sizes: tuple[int, ...] = (5, 6, 7, 8, 10, 12, 14)  # em height in pixels
    heldout_percent: int = 20  # share of all strings kept for the held-out split
    word_share: float = 0.5  # the rest are numbers
    digits: tuple[int, int] = (3, 6)  # shortest and longest number
    placement: str = "anywhere"  # or "centred": the middle, moved by up to a tenth of the image each way
    paper: bool = False  # plain backgrounds: any colour (ink dark or light to suit), or light paper only
    fonts: int = 0  # use the first N fonts found (Pillow's own is first); 0: all
    photo_share: float = 0.5  # the rest are plain backgrounds
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    text: str
    kind: str  # "number" or "word"
    font: str
    font_size: int
    background: str


def is_heldout(text: str, tc: TaskConfig) -> bool:
    """Which split a string belongs to: fixed by the seed and the string alone."""
    return zlib.crc32(f"{tc.seed}:{text}".encode()) % 100 < tc.heldout_percent


@lru_cache(maxsize=1)
def corpus_words() -> tuple[str, ...]:
    """Lower-case words of 3-6 letters from Python's documentation corpus, sorted, each once."""
    from pydoc_data.topics import topics

    found = set()
    for text in topics.values():
        found.update(w for w in re.findall(r"\b[a-z]{3,6}\b", text))
    return tuple(sorted(found))


@lru_cache(maxsize=2)
def split_words(split: str, seed: int, heldout_percent: int) -> tuple[str, ...]:
    tc = TaskConfig(seed=seed, heldout_percent=heldout_percent)
    return tuple(w for w in corpus_words() if is_heldout(w, tc) == (split == "heldout"))


def available_fonts() -> list[str]:
    """Pillow's own font first, then the Debian fonts installed here (the task works with the first alone)."""
    return [PILLOW_FONT] + [f for f in FONT_FILES if Path(f).is_file()]


@lru_cache(maxsize=256)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    if name == PILLOW_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(name, size)


@lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    """Real photographs shipped inside a package: scikit-learn's two (a temple in China, a flower).
    Only these, so that the task is the same on every machine with the `train` extra."""
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(a, dtype=np.uint8) for a in load_sample_images().images)


def draw_string(rng: np.random.Generator, split: str, tc: TaskConfig) -> tuple[str, str]:
    """A string of this split: rejection-sample numbers (fast, ~80% accepted), pick words from the split's list."""
    if rng.random() < tc.word_share:
        words = split_words(split, tc.seed, tc.heldout_percent)
        return words[int(rng.integers(len(words)))], "word"
    while True:
        digits = int(rng.integers(tc.digits[0], tc.digits[1] + 1))
        text = str(int(rng.integers(10 ** (digits - 1), 10**digits)))
        if is_heldout(text, tc) == (split == "heldout"):
            return text, "number"


def background(rng: np.random.Generator, kind: str, size: int, paper: bool = False) -> np.ndarray:
    if kind == "plain":
        return np.broadcast_to(rng.integers(192 if paper else 0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
    photos = photographs()
    photo = photos[int(rng.integers(len(photos)))]
    y = int(rng.integers(photo.shape[0] - size + 1))
    x = int(rng.integers(photo.shape[1] - size + 1))
    return photo[y : y + size, x : x + size].copy()


def ink_for(patch: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """Dark ink on light ground, light ink on dark: readable by a person, in a random tint."""
    luminance = float(patch.reshape(-1, 3).mean(0) @ np.array([0.299, 0.587, 0.114]))
    base = rng.integers(0, 60, 3) if luminance >= 128 else rng.integers(196, 256, 3)
    return tuple(int(c) for c in base)


def render(rng: np.random.Generator, split: str, tc: TaskConfig, fonts: list[str]) -> tuple[Image.Image, Sample]:
    font_name = fonts[int(rng.integers(len(fonts)))]
    font_size = int(tc.font_sizes[int(rng.integers(len(tc.font_sizes)))])
    bg_kind = BACKGROUNDS[int(rng.random() < tc.photo_share)]
    font = load_font(font_name, font_size)
    canvas = background(rng, bg_kind, tc.image_size, tc.paper)
    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    # A caption must be readable: a string wider than the image is drawn again (long words in large
    # fonts are therefore rarer than short ones; after a few tries a cut-off string is kept).
    for _ in range(8):
        text, kind = draw_string(rng, split, tc)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= tc.image_size:
            break
    if tc.placement == "centred":
        jitter = max(1, tc.image_size // 10)
        x = (tc.image_size - (right - left)) // 2 - left + int(rng.integers(-jitter, jitter + 1))
        y = (tc.image_size - (bottom - top)) // 2 - top + int(rng.integers(-jitter, jitter + 1))
    else:  # anywhere the whole string fits
        x = int(rng.integers(0, max(1, tc.image_size - (right - left)) + 1)) - left
        y = int(rng.integers(0, max(1, tc.image_size - (bottom - top)) + 1)) - top
    x0, y0 = max(0, x + left), max(0, y + top)
    patch = canvas[y0 : max(y0 + 1, y + bottom), x0 : max(x0 + 1, x + right)]
    draw.text((x, y), text, fill=ink_for(patch, rng), font=font)
    font_label = PILLOW_FONT if font_name == PILLOW_FONT else Path(font_name).stem
    return img, Sample(text, kind, font_label, font_size, bg_kind)


def sample(split: str, index: int, tc: TaskConfig, fonts: list[str]) -> tuple[Image.Image, Sample]:
    """Sample ``index`` of ``split``: depends on the seed, the split, the index and the font list only."""
    rng = np.random.default_rng([tc.seed, SPLITS.index(split), index])
    return render(rng, split, tc, fonts)


def write_split(root: Path, split: str, count: int, tc: TaskConfig, fonts: list[str],
                progress: Callable[[int], None] | None = None) -> Path:
    """Write ``count`` images and a mixed text file (the project's data format) plus a JSON-lines
    record of what each image shows; returns the text file."""
    (root / split).mkdir(parents=True, exist_ok=True)
    lines, records = [], []
    for i in range(count):
        img, s = sample(split, i, tc, fonts)
        rel = f"{split}/{i:06d}.png"
        img.save(root / rel)
        lines.append(f"<|image|>{rel}<|/image|>{s.text}")
        records.append(json.dumps({"image": rel, **asdict(s)}))
        if progress is not None:
            progress(1)
    (root / f"{split}.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    text_file = root / f"{split}.txt"
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return text_file


def read_records(root: Path, split: str) -> list[dict]:
    path = root / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
