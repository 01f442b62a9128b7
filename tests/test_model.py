import pytest
import torch

from pixdeploy.config import IGNORE, IMAGE_SLOT
from pixdeploy.generation import decode_one, prefill
from pixdeploy.model import PixTokenLM, split_losses
from pixdeploy.sequence import image_prompt


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return PixTokenLM(tiny_cfg.replace(text_vocab=40)).eval()


def rand_images(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g)


def full_sizes(cfg, n):
    return torch.full((n, 2), cfg.image_size)


@torch.no_grad()
def test_a_later_pixel_never_changes_an_earlier_pixels_state(model):
    cfg = model.cfg
    imgs = rand_images(cfg, 1)
    before, _ = model.image_states(imgs, full_sizes(cfg, 1))
    t = 37  # pixel 37 of window 0: row 4, column 5
    r, c = divmod(t, cfg.window)
    changed = imgs.clone()
    changed[0, r, c] = 255 - changed[0, r, c]
    after, _ = model.image_states(changed, full_sizes(cfg, 1))
    torch.testing.assert_close(after[0, :t], before[0, :t], rtol=0, atol=0)
    assert (after[0, t:] - before[0, t:]).abs().amax(-1).min() > 1e-4  # every later pixel sees it
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=0)


@torch.no_grad()
def test_a_windows_summary_depends_only_on_its_own_pixels(model):
    cfg = model.cfg
    imgs = rand_images(cfg, 2)
    before = model.encode_images(imgs, full_sizes(cfg, 2))
    changed = imgs.clone()
    w = cfg.window
    changed[1, w : 2 * w, 2 * w : 3 * w] = rand_images(cfg, 1, seed=9)[0, :w, :w]  # window (1, 2)
    after = model.encode_images(changed, full_sizes(cfg, 2))
    k = 1 * cfg.windows_per_side + 2
    diff = (after - before).abs().amax(-1)
    assert diff[1, k] > 1e-4
    diff[1, k] = 0
    assert diff.max() == 0


@torch.no_grad()
def test_padding_never_changes_valid_outputs(model):
    cfg = model.cfg
    S = cfg.image_size
    imgs = rand_images(cfg, 2)
    sizes = torch.tensor([[S, 13], [21, S]])  # right padding inside windows; bottom padding
    noisy = imgs.clone()
    noise = rand_images(cfg, 2, seed=5)
    noisy[0, :, 13:] = noise[0, :, 13:]
    noisy[1, 21:] = noise[1, 21:]
    tokens = torch.tensor([image_prompt(cfg.n_windows, [7, 8])] * 2)
    a = model(tokens, imgs, sizes)
    b = model(tokens, noisy, sizes)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ...and the padding really is excluded, not just constant: valid pixels in a right-padded window
    # whose padding precedes them in raster order never attend to it.
    states, valid = model.image_states(imgs, sizes)
    assert (~valid).any(1).sum() > 0


@torch.no_grad()
def test_cached_generation_equals_uncached_recomputation(model):
    cfg = model.cfg
    imgs, sizes = rand_images(cfg, 2), torch.tensor([[32, 32], [20, 32]])
    prompt = torch.tensor([image_prompt(cfg.n_windows, [9, 10, 11])] * 2)
    logits, cache = prefill(model, prompt, imgs, sizes)
    seq = prompt
    for _ in range(6):
        full = model(seq, imgs, sizes)[:, -1]
        torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)
        nxt = logits[:, : cfg.text_vocab].argmax(-1)
        logits, cache = decode_one(model, nxt, seq.shape[1], cache)
        seq = torch.cat([seq, nxt[:, None]], 1)


def test_split_losses_separate_pixel_and_word_targets():
    V, text_vocab = 10, 4
    logits = torch.randn(1, 5, V)
    targets = torch.tensor([[1, 6, IGNORE, 9, 2]])
    out = split_losses(logits, targets, text_vocab)
    per = torch.nn.functional.cross_entropy(logits[0], targets[0].clamp(min=0), reduction="none")
    assert out["pixel_count"] == 2 and out["word_count"] == 2
    torch.testing.assert_close(out["pixel_sum"], per[1] + per[3])
    torch.testing.assert_close(out["loss"], (per[0] + per[1] + per[3] + per[4]) / 4)
    weighted = split_losses(logits, targets, text_vocab, word_weight=10.0)
    torch.testing.assert_close(weighted["loss"], (10 * per[0] + per[1] + per[3] + 10 * per[4]) / 22)
    torch.testing.assert_close(weighted["word_sum"], out["word_sum"])  # the reported losses stay plain means


def test_image_slots_take_the_window_summaries_in_order(model):
    cfg = model.cfg
    imgs = rand_images(cfg, 1)
    tokens = torch.tensor([image_prompt(cfg.n_windows, [7])])
    summaries = model.encode_images(imgs, full_sizes(cfg, 1))
    x = model.embed(tokens, summaries)
    slots = (tokens[0] == IMAGE_SLOT).nonzero()[:, 0]
    torch.testing.assert_close(x[0, slots], summaries[0])


@pytest.mark.slow
def test_tiny_model_memorises_a_handful_of_images(tiny_cfg, digit_images, tmp_path):
    from pixdeploy.data import Example, collate, encode_example
    from pixdeploy.tokenizer import Tokenizer

    images, labels = digit_images
    examples = []
    for i, (img, label) in enumerate(zip(images[:4], labels[:4])):
        img.save(tmp_path / f"{i}.png")
        examples.append(Example((tmp_path / f"{i}.png", str(label)), str(i)))
    tok = Tokenizer.train([str(n) for n in range(10)] * 5, 64)
    cfg = tiny_cfg.replace(text_vocab=tok.vocab_size)
    batch = collate([encode_example(ex, tok, cfg) for ex in examples], cfg)
    batch = {k: torch.as_tensor(v) for k, v in batch.items()}
    torch.manual_seed(0)
    model = PixTokenLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = split_losses(model(batch["tokens"], batch["images"], batch["sizes"]), batch["targets"],
                            cfg.text_vocab)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()


@pytest.mark.parametrize("preset_name, layers", [("tiny", 2), ("tiny", 1), ("small", 3)])
@torch.no_grad()
def test_pruned_encoder_equals_the_full_form_on_real_letterboxed_images(preset_name, layers, photo, digit_images):
    from pixdeploy.config import preset
    from pixdeploy.folding import prepare_batch

    cfg = preset(preset_name).replace(image_layers=layers)
    torch.manual_seed(3)
    model = PixTokenLM(cfg).eval()
    # A wide photo (bottom padding, all-padding windows), a digit (tiny, mostly padding), a square crop.
    imgs, sizes = prepare_batch([photo, digit_images[0][0], photo.crop((0, 0, 300, 300))], cfg.image_size)
    imgs, sizes = torch.from_numpy(imgs), torch.from_numpy(sizes)
    full = model.encode_images(imgs, sizes, prune=False)
    pruned = model.encode_images(imgs, sizes)
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-5)
    assert (full[0] - full[2]).abs().max() > 1e-3  # the inputs differ, so a match is not vacuous


def test_training_runs_every_row_of_the_last_image_layer(model):
    seen = []
    hook = model.image_blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    cfg = model.cfg
    tokens = torch.tensor([image_prompt(cfg.n_windows, [7])])
    model.train()(tokens, rand_images(cfg, 1), full_sizes(cfg, 1))
    model.eval().encode_images(rand_images(cfg, 1), full_sizes(cfg, 1))
    hook.remove()
    assert seen == [(cfg.n_windows, cfg.window_tokens, cfg.dim), (cfg.n_windows, 1, cfg.dim)]
