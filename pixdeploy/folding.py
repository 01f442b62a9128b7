"""Image reading, letterboxing and colour folding — numpy for the runtime, torch for training.

Both implementations must agree bit for bit (tests/test_folding.py checks it): the runtime that ships
to a Jetson has no torch, and its pixel tokens must be the ones the model was trained on.

A pixel's token id is ``r//f + (g//f)*L + (b//f)*L*L`` with ``L = 256 // f``; letterbox padding gets
the extra id ``L**3``. Images are letterboxed to ``S x S``: resized so the longer side is ``S``, then
padded on the right or bottom. ``sizes`` (h, w) say which part is image; the mask follows from them.

This module imports only numpy and Pillow; torch functions take torch tensors and need no import.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pixdeploy.errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow warns at 89M pixels and refuses at twice that; a pixel-token model reads 224x224, so anything
# this large is a decompression bomb or a mistake. Refuse it before decoding.
MAX_IMAGE_PIXELS = 64_000_000
RESAMPLE = Image.Resampling.BICUBIC


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: EXIF rotation applied, alpha composited over white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's own I -> RGB conversion clips at 255; rescale 16-bit range to 8 bits instead.
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():  # no colour to fold: refused, not read as black
            raise ValueError("it holds NaN or infinite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(source: str | os.PathLike | bytes | Image.Image | np.ndarray) -> Image.Image:
    """Open an image file (or take a Pillow image or an HxWx3 uint8 array) as RGB; one `ImageError`
    for anything unusable."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ImageError(f"array images must be HxWx3 uint8, got {source.dtype} {source.shape}")
        img = Image.fromarray(source, "RGB")
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, (bytes, bytearray)):  # an encoded image file received over a network
        if not source:
            raise ImageError("image data is empty")
        img = _open_checked(io.BytesIO(source), "image data")
    else:
        path = Path(source)
        if not path.is_file():
            if path.is_dir():
                raise ImageError(f"{path} is a folder, not an image")
            if path.is_symlink():  # exists() is False for a dangling link and for a loop alike
                raise ImageError(f"image {path} is a broken symlink or a symlink loop")
            if path.exists():  # a FIFO, socket or device: reading it could block or never end
                raise ImageError(f"{path} is not a regular file (a pipe, socket or device), not an image")
            raise ImageError(f"image not found: {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"image file is empty: {path}")
        img = _open_checked(path, path)
    if img.width < 1 or img.height < 1:
        raise ImageError("image has zero size")
    try:
        return to_rgb(img)
    except (OSError, ValueError) as e:
        where = f" {source}" if isinstance(source, (str, os.PathLike)) else ""
        raise ImageError(f"cannot convert image{where} to RGB: {e}") from None


def _open_checked(fp, name) -> Image.Image:
    """Decode an image file (path or file object), refusing decompression bombs before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"image too large: {name} is {img.width}x{img.height} "
                    f"(more than {MAX_IMAGE_PIXELS:,} pixels; possible decompression bomb)"
                )
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow refused at open
        raise ImageError(f"image too large: {name} ({e}; possible decompression bomb)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot read image {name}: {e}") from None
    return img


def letterbox(img: Image.Image, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize so the longer side is ``image_size``; pad right/bottom with zeros.

    Returns the (S, S, 3) uint8 array and the (h, w) of the image part.
    """
    w0, h0 = img.size
    scale = image_size / max(w0, h0)
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    resized = np.asarray(img.resize((w, h), RESAMPLE) if (w, h) != (w0, h0) else img, dtype=np.uint8)
    out = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    out[:h, :w] = resized
    return out, (h, w)


def prepare_image(source, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read + letterbox: the preprocessing shared by training and the runtime."""
    rgb, size = letterbox(load_image(source), image_size)
    return rgb, np.asarray(size, dtype=np.int64)


def prepare_batch(sources, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of any sizes -> letterboxed (N, S, S, 3) uint8 and their (N, 2) sizes."""
    if not len(sources):
        raise ImageError("no images given")
    prepared = [prepare_image(s, image_size) for s in sources]
    return np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])


# ---- numpy ------------------------------------------------------------------------------------------


def valid_mask_np(sizes: np.ndarray, image_size: int) -> np.ndarray:
    """(N, 2) sizes -> (N, S, S) bool, True where the pixel is image, False where it is padding."""
    sizes = np.asarray(sizes).reshape(-1, 2)
    idx = np.arange(image_size)
    return (idx[None, :, None] < sizes[:, 0, None, None]) & (idx[None, None, :] < sizes[:, 1, None, None])


def fold_np(rgb: np.ndarray, sizes: np.ndarray, fold: int) -> np.ndarray:
    """(N, S, S, 3) uint8 + (N, 2) sizes -> (N, S, S) int64 pixel-token ids, padding = L**3."""
    levels = 256 // fold
    shift = fold.bit_length() - 1  # fold is a power of two: // is a shift, exactly as in the graph
    c = rgb.astype(np.int64) >> shift
    ids = c[..., 0] + c[..., 1] * levels + c[..., 2] * (levels * levels)
    return np.where(valid_mask_np(sizes, rgb.shape[1]), ids, levels**3)


# ---- torch ------------------------------------------------------------------------------------------


def valid_mask_torch(sizes, image_size: int):
    """Torch twin of `valid_mask_np`."""
    import torch

    idx = torch.arange(image_size, device=sizes.device)
    sizes = sizes.reshape(-1, 2)
    return (idx[None, :, None] < sizes[:, 0, None, None]) & (idx[None, None, :] < sizes[:, 1, None, None])


def fold_torch(rgb, sizes, fold: int):
    """Torch twin of `fold_np`: (N, S, S, 3) uint8 + (N, 2) sizes -> (N, S, S) int64 ids."""
    import torch

    levels = 256 // fold
    c = torch.div(rgb.to(torch.int64), fold, rounding_mode="floor")
    ids = c[..., 0] + c[..., 1] * levels + c[..., 2] * (levels * levels)
    pad = torch.full_like(ids, levels**3)
    return torch.where(valid_mask_torch(sizes, rgb.shape[1]), ids, pad)
