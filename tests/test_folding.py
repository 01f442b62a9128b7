import io

import numpy as np
import pytest
import torch
from PIL import Image

from pixdeploy.errors import ImageError
from pixdeploy.folding import fold_np, fold_torch, letterbox, load_image, prepare_image, valid_mask_np


@pytest.mark.parametrize("fold", [2, 4, 8, 16, 32, 64, 128, 256])
def test_numpy_and_torch_folding_agree_bit_for_bit(fold):
    rng = np.random.default_rng(fold)
    rgb = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    sizes = np.array([[20, 20], [20, 7], [1, 20]])
    a = fold_np(rgb, sizes, fold)
    b = fold_torch(torch.from_numpy(rgb), torch.from_numpy(sizes), fold).numpy()
    assert a.dtype == b.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    L = 256 // fold
    assert a.max() <= L**3 and a.min() >= 0
    assert (a[1, :, 7:] == L**3).all() and (a[1, :, :7] < L**3).all()
    assert (a[2, 1:] == L**3).all()


def test_token_id_formula():
    rgb = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [17, 35, 200]]]], dtype=np.uint8)
    ids = fold_np(rgb, np.array([[2, 2]]), 16)[0]
    assert ids.tolist() == [[15, 15 * 16], [15 * 256, 1 + 2 * 16 + 12 * 256]]


@pytest.mark.parametrize("w, h", [(100, 50), (50, 100), (64, 64), (1, 300), (300, 1), (31, 33)])
def test_letterbox_keeps_aspect_and_pads_right_or_bottom(w, h):
    img = Image.new("RGB", (w, h), (200, 100, 50))
    arr, (hh, ww) = letterbox(img, 32)
    assert arr.shape == (32, 32, 3) and max(hh, ww) == 32 and min(hh, ww) >= 1
    scale = 32 / max(w, h)
    assert (hh, ww) == (max(1, round(h * scale)), max(1, round(w * scale)))
    mask = valid_mask_np(np.array([hh, ww]), 32)[0]
    assert mask.sum() == hh * ww
    assert (arr[~mask] == 0).all() and (arr[mask] == (200, 100, 50)).all()


def _roundtrip(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGB"])
def test_every_pillow_mode_reads_as_rgb(mode, photo):
    img = photo.resize((40, 30)).convert(mode) if mode not in ("I;16", "I", "F") else None
    if img is None:
        gray = np.asarray(photo.resize((40, 30)).convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(gray) if mode == "I;16" else Image.fromarray(gray.astype(np.int32)).convert(mode)
        assert img.mode == mode
    rgb, size = prepare_image(img, 32)
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3) and tuple(size) == (24, 32)
    # The content survives the conversion: not a black or saturated image.
    assert 20 < rgb[:24].mean() < 235 and rgb[:24].std() > 10


def test_sixteen_bit_images_keep_their_range():
    arr = np.full((8, 8), 40000, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    rgb, _ = prepare_image(img, 8)
    assert (rgb == 40000 >> 8).all()


def test_transparent_pixels_are_composited_over_white():
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgb, _ = prepare_image(img, 4)
    assert (rgb == 255).all()


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    upright = load_image(path)
    assert upright.size == (20, 40)  # portrait once the EXIF orientation is applied
    top = np.asarray(upright)[:10].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60  # the blue half is on top after a clockwise turn


def test_unreadable_files_raise_one_image_error(tmp_path, photo):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    truncated = tmp_path / "trunc.png"
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for path, msg in [(empty, "empty"), (garbage, "cannot read"), (truncated, "cannot read"),
                      (tmp_path / "missing.png", "not found")]:
        with pytest.raises(ImageError, match=msg):
            load_image(path)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(path)  # 81M pixels, a few kB on disk
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_image_bytes_read_as_the_file_does(tmp_path, photo):
    """Servers receive encoded files as bytes: same pixels, same refusals as a path."""
    path = tmp_path / "p.jpg"
    photo.save(path)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), np.asarray(load_image(path)))
    with pytest.raises(ImageError, match="image data is empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="cannot read image image data"):
        load_image(path.read_bytes()[:200])
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(bomb.getvalue())
