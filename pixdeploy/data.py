"""Data: image folders and mixed text files, streamed in batches by worker processes.

An *example* is a list of segments, each a text string or an image path. Two sources:
- an image folder (jpg/png/webp/..., nested): each image is one image-only example;
- mixed text files in the paper's format: each non-empty line is an example in which images appear
  inline as ``<|image|>relative/path.jpg<|/image|>`` (paths relative to the image root).

A data file is untrusted input. A line whose image tags do not pair up, or whose image path leaves the
image root (``../x.png``, an absolute path; allowed only with ``allow_outside_root``), is skipped and
reported like an unreadable image. A folder is read as mixed text only when its ``.txt`` files use the
paper's format (hold ``<|image|>`` references); a folder of images is image-only pretraining, and a
folder that could be either is refused rather than guessed (``kind`` chooses).

Only the example index (paths and text) is held in memory; images are read by the workers that build
each batch. A file that cannot be read is skipped and reported at the end: one bad file never stops a run.
Batch ``b`` of epoch ``e`` is a fixed slice of a seeded permutation, so a resumed run sees the same batches.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixdeploy.config import BOS_ID, EOS_ID, IGNORE, IMAGE_END_ID, IMAGE_START_ID, PAD_ID, ModelConfig
from pixdeploy.errors import DataError, ImageError
from pixdeploy.folding import IMAGE_EXTENSIONS, fold_np, prepare_image
from pixdeploy.sequence import image_span
from pixdeploy.tokenizer import Tokenizer

IMAGE_REF = re.compile(r"<\|image\|>(.*?)<\|/image\|>")
IMAGE_TAGS = ("<|image|>", "<|/image|>")
DATA_KINDS = ("auto", "images", "mixed")
ALLOW_OUTSIDE_FLAG = "--allow-outside-image-root"  # named in messages; the CLI defines it


@dataclass(frozen=True)
class Example:
    segments: tuple[str | Path, ...]  # str: text; Path: an image
    origin: str  # where it came from, for error messages

    @property
    def texts(self) -> list[str]:
        return [s for s in self.segments if isinstance(s, str)]


@dataclass
class DataSet:
    """The examples of a data path, how the path was read, and what was skipped (with why)."""

    examples: list[Example]
    reading: str  # one line for the user: which reading was chosen and what was left out
    skipped: list[str] = field(default_factory=list)  # "origin: reason"


class SkippedLine(DataError):
    """One line of a mixed text file that cannot be used; the line is skipped and reported."""


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def broken_links(root: Path) -> list[Path]:
    """Image-named entries that are symlinks leading nowhere (dangling, or a loop): reported, not silently dropped."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_symlink() and not p.exists())


def inside(root: Path, ref: str) -> bool:
    """Whether ``ref`` names a path under ``root`` as written (lexically: no ``..`` out, not absolute).
    Symlinks the user placed inside the root are the user's choice and are followed."""
    if os.path.isabs(ref):
        return False
    norm = os.path.normpath(ref)
    return norm != ".." and not norm.startswith(".." + os.sep)


def parse_mixed_line(line: str, image_root: Path, origin: str, allow_outside_root: bool = False) -> Example:
    segments: list[str | Path] = []
    pos = 0
    for m in IMAGE_REF.finditer(line):
        if m.start() > pos:
            segments.append(line[pos : m.start()])
        ref = m.group(1).strip()
        if not ref:
            raise SkippedLine(f"{origin}: empty image reference")
        if IMAGE_TAGS[0] in ref:
            raise SkippedLine(f"{origin}: unclosed {IMAGE_TAGS[0]} tag before {ref!r}")
        if not allow_outside_root and not inside(image_root, ref):
            raise SkippedLine(f"{origin}: image path {ref!r} leaves the image root {image_root} "
                              f"(pass {ALLOW_OUTSIDE_FLAG} to read it)")
        path = image_root / ref
        if not path.is_file():  # stat only: a FIFO is never opened
            if path.is_symlink() and not path.exists():
                raise SkippedLine(f"{origin}: image {ref!r} is a broken symlink or a symlink loop")
            if path.is_dir():
                raise SkippedLine(f"{origin}: image {ref!r} is a folder, not an image")
            if path.exists():
                raise SkippedLine(f"{origin}: image {ref!r} is not a regular file (a pipe, socket or device)")
            raise DataError(f"{origin} references a missing image: {ref!r} (looked in {image_root})")
        segments.append(path)
        pos = m.end()
    rest = line[pos:]
    for tag in IMAGE_TAGS:  # a tag left over once every pair is taken is malformed
        if tag in rest or any(isinstance(seg, str) and tag in seg for seg in segments):
            what = "unclosed" if tag == IMAGE_TAGS[0] else "unopened"
            raise SkippedLine(f"{origin}: {what} {tag} tag")
    if rest:
        segments.append(rest)
    return Example(tuple(segments), origin)


def read_text_lines(f: Path) -> list[str]:
    try:
        data = f.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read text file {f}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{f} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "mixed text files must be UTF-8") from None


def read_mixed_text(files: list[Path], image_root: Path, allow_outside_root: bool = False,
                    skipped: list[str] | None = None) -> list[Example]:
    """Examples of mixed text files; unusable lines go to ``skipped`` (or raise when it is None)."""
    examples = []
    for f in files:
        for n, line in enumerate(read_text_lines(f), 1):
            if not line.strip():
                continue
            try:
                examples.append(parse_mixed_line(line.strip(), image_root, f"{f}:{n}", allow_outside_root))
            except SkippedLine as e:
                if skipped is None:
                    raise
                skipped.append(str(e))
    return examples


def load_data(path: str | Path, image_root: str | Path | None = None, *, kind: str = "auto",
              allow_outside_root: bool = False) -> DataSet:
    """A folder of images, a mixed text file, or a folder holding mixed text files (*.txt).

    ``kind`` "auto" decides from what the folder holds and refuses a folder that could be either;
    "images" or "mixed" says it.
    """
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data kind {kind!r}; choose {', '.join(DATA_KINDS)}")
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"data path {path} is a broken symlink or a symlink loop")
        raise DataError(f"data path not found: {path}")
    skipped: list[str] = []
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS or kind == "images":
            raise DataError(f"--data takes a folder of images or a mixed text file; {path} is a single "
                            f"{'image' if path.suffix.lower() in IMAGE_EXTENSIONS else 'file'} "
                            "(put the images in a folder and give the folder)")
        root = Path(image_root) if image_root else path.parent
        examples = read_mixed_text([path], root, allow_outside_root, skipped)
        reading = f"{path}: mixed text file, {len(examples)} examples (images under {root})"
    else:
        examples, reading = _read_folder(path, image_root, kind, allow_outside_root, skipped)
    if not examples:
        if skipped:
            raise DataError(f"no usable examples in {path} ({len(skipped)} skipped; first: {skipped[0]})")
        raise DataError(f"no images or text examples found in {path}")
    if skipped:
        reading += f"; {len(skipped)} line(s) skipped"
    return DataSet(examples, reading, skipped)


def _read_folder(path: Path, image_root, kind: str, allow_outside_root: bool, skipped: list[str]):
    texts = sorted(p for p in path.rglob("*.txt") if p.is_file())
    images = find_images(path)
    skipped += [f"{p}: broken symlink or symlink loop" for p in broken_links(path)]
    lines = {t: read_text_lines(t) for t in texts}
    explicit = kind != "auto"
    mixed = [t for t in texts if any(IMAGE_TAGS[0] in line for line in lines[t])]
    if kind == "auto":
        kind = "mixed" if mixed or (texts and not images) else "images"
    if kind == "mixed":
        root = Path(image_root) if image_root else path
        examples = read_mixed_text(texts, root, allow_outside_root, skipped)
        if mixed and images and not explicit:
            used = {os.path.normpath(seg) for ex in examples for seg in ex.segments if isinstance(seg, Path)}
            unused = [p for p in images if os.path.normpath(p) not in used]
            if unused:
                raise DataError(
                    f"{path} is ambiguous: it holds mixed text files ({mixed[0].name}, ...) and {len(unused)} "
                    f"image(s) none of them references (e.g. {unused[0].relative_to(path)}); pass "
                    "--data-kind mixed to train on the text files, or --data-kind images for image-only pretraining")
        return examples, (f"{path}: folder of {len(texts)} mixed text file(s), {len(examples)} examples "
                          f"(images under {root})")
    examples = [Example((p,), str(p)) for p in images]
    reading = f"{path}: image folder, {len(images)} images (image-only pretraining)"
    if texts:
        why = "--data-kind images" if explicit else f"they hold no {IMAGE_TAGS[0]} references"
        reading += (f"; {len(texts)} .txt file(s) not used, {why} "
                    f"({', '.join(t.name for t in texts[:3])}{', ...' if len(texts) > 3 else ''})")
    return examples, reading


def load_examples(path: str | Path, image_root: str | Path | None = None) -> list[Example]:
    """The examples of `load_data` (automatic reading)."""
    return load_data(path, image_root).examples


def require_readable(examples: list[Example], image_size: int, where) -> None:
    """Fail early when not one example can be read (reads only until the first success)."""
    first = None
    for ex in examples:
        try:
            for seg in ex.segments:
                if isinstance(seg, Path):
                    prepare_image(seg, image_size)
            return
        except ImageError as e:
            first = first or str(e)
            continue
    raise DataError(f"no readable image in {where}: every file failed to decode (first: {first})")


def holdout_split(examples: list[Example], percent: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split by a hash of each example's origin (stable as data grows)."""
    train, held = [], []
    for ex in examples:
        # surrogateescape: a file name that is not UTF-8 hashes as its bytes (valid UTF-8 hashes as before)
        (held if zlib.crc32(ex.origin.encode("utf-8", "surrogateescape")) % 100 < percent else train).append(ex)
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
