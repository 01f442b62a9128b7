import numpy as np
import pytest
from PIL import Image

from pixdeploy.config import EOS_ID, IGNORE, IMAGE_END_ID, IMAGE_SLOT, IMAGE_START_ID
from pixdeploy.data import BatchStream, Example, encode_example, holdout_split, load_examples
from pixdeploy.errors import DataError
from pixdeploy.folding import fold_np
from pixdeploy.tokenizer import Tokenizer


def write_images(root, photo, n=3):
    paths = []
    for i in range(n):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        ext = [".jpg", ".png", ".webp"][i % 3]
        p = sub / f"img{i}{ext}"
        photo.crop((i * 30, 0, i * 30 + 200 + 40 * i, 150)).save(p)
        paths.append(p)
    return paths


def test_image_folder_is_found_recursively(tmp_path, photo):
    paths = write_images(tmp_path, photo, 5)
    (tmp_path / "notes.md").write_text("not an image")
    ex = load_examples(tmp_path)
    assert sorted(e.segments[0] for e in ex) == sorted(paths)


def test_mixed_text_splits_text_and_images(tmp_path, photo):
    write_images(tmp_path, photo, 2)
    (tmp_path / "corpus.txt").write_text("A photo <|image|>b/c/img0.jpg<|/image|> of a palace.\n\n"
                                         "<|image|>a/img1.png<|/image|>\nplain text only\n")
    ex = load_examples(tmp_path / "corpus.txt")
    assert [len(e.segments) for e in ex] == [3, 1, 1]
    assert ex[0].segments[0] == "A photo " and ex[0].segments[1] == tmp_path / "b/c/img0.jpg"
    assert ex[2].segments == ("plain text only",)


def test_missing_referenced_image_is_one_clear_error(tmp_path):
    (tmp_path / "t.txt").write_text("see <|image|>nope.jpg<|/image|>\n")
    with pytest.raises(DataError, match=r"t.txt:1 references a missing image: 'nope.jpg'"):
        load_examples(tmp_path)


@pytest.mark.parametrize("setup, msg", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "no images or text examples"),
])
def test_missing_or_empty_data_is_one_clear_error(tmp_path, setup, msg):
    target = tmp_path / "data"
    setup(target)
    with pytest.raises(DataError, match=msg):
        load_examples(target)


def test_targets_follow_the_paper(tmp_path, photo, tiny_cfg):
    """<|image|> predicts window 0's first pixel; window k predicts window k+1's; the last window
    predicts <|/image|>; padding targets are ignored."""
    photo.crop((0, 0, 300, 100)).save(tmp_path / "wide.png")  # letterboxed: bottom windows are padding
    tok = Tokenizer.train(["a wide photo"] * 3, 300)
    cfg = tiny_cfg.replace(text_vocab=tok.vocab_size)
    tokens, targets, images, sizes = encode_example(Example((tmp_path / "wide.png", "a wide photo"), "x"), tok, cfg)
    ids = fold_np(images[0][None], sizes[0][None], cfg.fold)[0]
    first = ids[:: cfg.window, :: cfg.window].reshape(-1)
    start = tokens.index(IMAGE_START_ID)
    slots = [i for i, t in enumerate(tokens) if t == IMAGE_SLOT]
    assert len(slots) == cfg.n_windows and slots[0] == start + 1
    expect = [cfg.text_vocab + int(c) if c != cfg.pixel_pad_id else IGNORE for c in first]
    assert [targets[start]] + [targets[s] for s in slots[:-1]] == expect
    assert targets[slots[-1]] == IMAGE_END_ID
    assert IGNORE in expect and expect[0] != IGNORE  # the bottom windows are padding here
    assert tokens[-1] == EOS_ID and targets[-1] == IGNORE and targets[-2] == EOS_ID
    assert tok.decode(tokens[slots[-1] + 2 : -1]) == "a wide photo"


def test_unreadable_files_are_skipped_and_reported(tmp_path, photo, tiny_cfg):
    write_images(tmp_path, photo, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ex = load_examples(tmp_path)
    stream = BatchStream(ex, Tokenizer.image_only(), tiny_cfg, batch_size=4, epoch=0, seed=0)
    (batch,) = list(stream.batches())
    assert len(batch["skipped"]) == 1 and "broken.jpg" in batch["skipped"][0]
    assert batch["tokens"].shape[0] == 3 and batch["images"].shape == (3, 32, 32, 3)


def test_batches_are_the_same_from_any_start_and_worker_split(tmp_path, photo, tiny_cfg):
    write_images(tmp_path, photo, 8)
    ex = load_examples(tmp_path)
    tok = Tokenizer.image_only()
    full = list(BatchStream(ex, tok, tiny_cfg, 2, epoch=3, seed=1).batches())
    resumed = list(BatchStream(ex, tok, tiny_cfg, 2, epoch=3, seed=1, start=2).batches())
    assert [b["index"] for b in resumed] == [2, 3]
    np.testing.assert_array_equal(full[2]["images"], resumed[0]["images"])
    w0 = list(BatchStream(ex, tok, tiny_cfg, 2, epoch=3, seed=1).batches(0, 2))
    assert [b["index"] for b in w0] == [0, 2]
    w1 = list(BatchStream(ex, tok, tiny_cfg, 2, epoch=3, seed=1, start=1).batches(0, 2))
    assert [b["index"] for b in w1] == [1, 3]
    other_epoch = list(BatchStream(ex, tok, tiny_cfg, 2, epoch=4, seed=1).batches())
    assert any((a["images"] != b["images"]).any() for a, b in zip(full, other_epoch))


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_worker_processes_deliver_batches_in_order_from_any_start(tmp_path, photo, tiny_cfg, workers):
    from pixdeploy.data import make_loader

    write_images(tmp_path, photo, 7)
    stream = BatchStream(load_examples(tmp_path), Tokenizer.image_only(), tiny_cfg, 1, epoch=0, seed=2, start=3)
    assert [b["index"] for b in make_loader(stream, workers)] == [3, 4, 5, 6]


def test_ranks_see_disjoint_shards(tmp_path, photo, tiny_cfg):
    write_images(tmp_path, photo, 6)
    ex = load_examples(tmp_path)
    a = BatchStream(ex, Tokenizer.image_only(), tiny_cfg, 1, 0, 0, rank=0, world=2)
    b = BatchStream(ex, Tokenizer.image_only(), tiny_cfg, 1, 0, 0, rank=1, world=2)
    assert not set(a.order) & set(b.order) and len(a.order) == len(b.order) == 3


def test_holdout_split_is_deterministic(tmp_path, photo):
    write_images(tmp_path, photo, 6)
    ex = load_examples(tmp_path)
    train, held = holdout_split(ex, 50)
    assert holdout_split(list(reversed(ex)), 50) == (train[::-1], held[::-1])  # by content, not order
    assert len(train) + len(held) == 6 and set(train).isdisjoint(held)
    with pytest.raises(DataError, match="no training examples"):
        holdout_split(ex, 100)


def test_long_examples_are_cut_without_splitting_an_image(tmp_path, photo, tiny_cfg):
    photo.save(tmp_path / "p.png")
    tok = Tokenizer.train(["word " * 50], 300)
    cfg = tiny_cfg.replace(text_vocab=tok.vocab_size)
    ex = Example(("word " * 55, tmp_path / "p.png", "end"), "x")
    tokens, targets, images, sizes = encode_example(ex, tok, cfg)
    assert len(tokens) <= cfg.max_seq_len and IMAGE_SLOT not in tokens and images == []
    assert targets[-1] == IGNORE


def test_grayscale_and_palette_images_load_in_batches(tmp_path, tiny_cfg, photo):
    photo.convert("L").save(tmp_path / "g.png")
    photo.convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(tmp_path / "d.png")
    ex = load_examples(tmp_path)
    (batch,) = BatchStream(ex, Tokenizer.image_only(), tiny_cfg, 3, 0, 0).batches()
    assert batch["skipped"] == [] and batch["images"].shape[0] == 3
