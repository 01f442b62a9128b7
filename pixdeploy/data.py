"""Data: image folders and mixed text files, streamed in batches by worker processes.

An *example* is a list of segments, each a text string or an image path. Two sources:
- an image folder (jpg/png/webp/..., nested): each image is one image-only example;
- mixed text files in the paper's format: each non-empty line is an example in which images appear
  inline as ``<|image|>relative/path.jpg<|/image|>`` (paths relative to the image root).

Only the example index (paths and text) is held in memory; images are read by the workers that build
each batch. A file that cannot be read is skipped and reported at the end: one bad file never stops a run.
Batch ``b`` of epoch ``e`` is a fixed slice of a seeded permutation, so a resumed run sees the same batches.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixdeploy.config import BOS_ID, EOS_ID, IGNORE, IMAGE_END_ID, IMAGE_START_ID, PAD_ID, ModelConfig
from pixdeploy.errors import DataError, ImageError
from pixdeploy.folding import IMAGE_EXTENSIONS, fold_np, prepare_image
from pixdeploy.sequence import image_span
from pixdeploy.tokenizer import Tokenizer

IMAGE_REF = re.compile(r"<\|image\|>(.*?)<\|/image\|>")


@dataclass(frozen=True)
class Example:
    segments: tuple[str | Path, ...]  # str: text; Path: an image
    origin: str  # where it came from, for error messages

    @property
    def texts(self) -> list[str]:
        return [s for s in self.segments if isinstance(s, str)]


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def parse_mixed_line(line: str, image_root: Path, origin: str) -> Example:
    segments: list[str | Path] = []
    pos = 0
    for m in IMAGE_REF.finditer(line):
        if m.start() > pos:
            segments.append(line[pos : m.start()])
        ref = m.group(1).strip()
        path = image_root / ref
        if not ref or not path.is_file():
            raise DataError(f"{origin} references a missing image: {ref!r} (looked in {image_root})")
        segments.append(path)
        pos = m.end()
    if pos < len(line):
        segments.append(line[pos:])
    return Example(tuple(segments), origin)


def read_mixed_text(files: list[Path], image_root: Path) -> list[Example]:
    examples = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read text file {f}: {e}") from None
        for n, line in enumerate(lines, 1):
            if line.strip():
                examples.append(parse_mixed_line(line.strip(), image_root, f"{f}:{n}"))
    return examples


def load_examples(path: str | Path, image_root: str | Path | None = None) -> list[Example]:
    """A folder of images, a mixed text file, or a folder holding mixed text files (*.txt)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_file():
        examples = read_mixed_text([path], Path(image_root) if image_root else path.parent)
    else:
        texts = sorted(path.rglob("*.txt"))
        if texts:
            examples = read_mixed_text(texts, Path(image_root) if image_root else path)
        else:
            examples = [Example((p,), str(p)) for p in find_images(path)]
    if not examples:
        raise DataError(f"no images or text examples found in {path}")
    return examples


def require_readable(examples: list[Example], image_size: int, where) -> None:
    """Fail early when not one example can be read (reads only until the first success)."""
    for ex in examples:
        try:
            for seg in ex.segments:
                if isinstance(seg, Path):
                    prepare_image(seg, image_size)
            return
        except ImageError:
            continue
    raise DataError(f"no readable image in {where}: every file failed to decode")


def holdout_split(examples: list[Example], percent: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split by a hash of each example's origin (stable as data grows)."""
    train, held = [], []
    for ex in examples:
        (held if zlib.crc32(ex.origin.encode()) % 100 < percent else train).append(ex)
    if not train:
        raise DataError("the hold-out split left no training examples; add data or lower --eval-percent")
    return train, held


def window_first_pixels(rgb: np.ndarray, size: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The colour id of each window's first pixel (raster order of windows): the image targets."""
    ids = fold_np(rgb[None], size[None], cfg.fold)[0]
    return ids[:: cfg.window, :: cfg.window].reshape(-1)


def encode_example(ex: Example, tok: Tokenizer, cfg: ModelConfig):
    """-> (tokens, targets, images, sizes) or raises ImageError for an unreadable image.

    Sequence: <s> text... <|image|> [W window slots] <|/image|> text... </s>. Targets follow DESIGN §1:
    each position predicts the next word token, or the first colour of the next window.
    """
    tokens, next_targets, images, sizes = [BOS_ID], [], [], []
    for seg in ex.segments:
        if isinstance(seg, Path):
            rgb, size = prepare_image(seg, cfg.image_size)
            first = window_first_pixels(rgb, size, cfg)
            images.append(rgb)
            sizes.append(size)
            tokens += image_span(cfg.n_windows)
            # What each new token's *predecessor* must predict.
            slot_targets = [cfg.text_vocab + int(c) if c != cfg.pixel_pad_id else IGNORE for c in first]
            next_targets += [IMAGE_START_ID] + slot_targets + [IMAGE_END_ID]
        else:
            ids = tok.encode(seg)
            tokens += ids
            next_targets += ids
    tokens.append(EOS_ID)
    next_targets.append(EOS_ID)
    targets = next_targets + [IGNORE]  # the last position has no successor
    if len(tokens) > cfg.max_seq_len:
        tokens, targets, images, sizes = truncate(tokens, targets, images, sizes, cfg.max_seq_len)
    return tokens, targets, images, sizes


def truncate(tokens, targets, images, sizes, limit):
    """Cut at ``limit`` tokens; an image that would be cut in half is dropped with what follows it."""
    starts = [i for i, t in enumerate(tokens) if t == IMAGE_START_ID]
    kept, cut = 0, limit
    for s in starts:
        end = tokens.index(IMAGE_END_ID, s)
        if end >= limit:
            cut = s
            break
        kept += 1
    tokens, targets = tokens[:cut], targets[:cut]
    targets[-1] = IGNORE
    return tokens, targets, images[:kept], sizes[:kept]


def collate(encoded: list, cfg: ModelConfig) -> dict:
    """Right-pad to the longest sequence. A batch always carries at least one image, so every
    parameter takes part in every step (DistributedDataParallel requires it); a filler image is
    never referenced by a slot and its targets do not exist."""
    if not encoded:
        encoded = [([BOS_ID], [IGNORE], [], [])]
    T = max(len(e[0]) for e in encoded)
    tokens = np.full((len(encoded), T), PAD_ID, dtype=np.int64)
    targets = np.full((len(encoded), T), IGNORE, dtype=np.int64)
    images, sizes = [], []
    for i, (tk, tg, im, sz) in enumerate(encoded):
        tokens[i, : len(tk)] = tk
        targets[i, : len(tg)] = tg
        images += im
        sizes += sz
    if not images:
        images = [np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)]
        sizes = [np.array([1, 1], dtype=np.int64)]
    return {"tokens": tokens, "targets": targets, "images": np.stack(images), "sizes": np.stack(sizes)}


class BatchStream:
    """Iterable of batches ``start..n_batches-1`` of one epoch, for one rank; a torch IterableDataset
    when wrapped by `make_loader`. Worker ``w`` of ``n`` builds batches ``b`` with
    ``(b - start) % n == w``; the DataLoader takes them round-robin from worker 0, so the order is the
    same with any number of workers and from any start."""

    def __init__(self, examples, tok, cfg, batch_size, epoch, seed, rank=0, world=1, start=0):
        self.examples, self.tok, self.cfg = examples, tok, cfg
        self.batch_size, self.start = batch_size, start
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        per_rank = len(examples) // world
        self.order = order[rank * per_rank : (rank + 1) * per_rank]

    @property
    def n_batches(self) -> int:
        return len(self.order) // self.batch_size

    def batch(self, b: int) -> dict:
        encoded, skipped = [], []
        for j in self.order[b * self.batch_size : (b + 1) * self.batch_size]:
            ex = self.examples[j]
            try:
                encoded.append(encode_example(ex, self.tok, self.cfg))
            except ImageError as e:
                skipped.append(f"{ex.origin}: {e}")
        out = collate(encoded, self.cfg)
        out["skipped"] = skipped
        out["index"] = b
        return out

    def batches(self, worker: int = 0, n_workers: int = 1):
        for b in range(self.start, self.n_batches):
            if (b - self.start) % n_workers == worker:  # worker 0 takes `start`: the loader asks it first
                yield self.batch(b)


def make_loader(stream: BatchStream, num_workers: int):
    """Wrap a BatchStream in a DataLoader with worker processes (batching happens in the workers)."""
    import torch.utils.data as tud

    class _Iterable(tud.IterableDataset):
        def __iter__(self):
            info = tud.get_worker_info()
            return stream.batches(info.id, info.num_workers) if info else stream.batches()

    return tud.DataLoader(
        _Iterable(),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )
