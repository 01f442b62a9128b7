"""Reference generation in PyTorch: a few small pure functions (prefill, decode_one, sample).

Generated tokens are word tokens: sampling is restricted to the first ``text_vocab`` logits, because a
colour token fed back would need the image block. Sequences in a batch share one prompt length.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pixdeploy.model import PixTokenLM
from pixdeploy.runtime.sampling import GREEDY, Sampling  # one record for this loop and the runtime's
from pixdeploy.sequence import collect_until_stop, image_prompt


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids. temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def prefill(model: PixTokenLM, tokens: torch.Tensor, images, sizes):
    """Run the whole prompt; returns the last position's word logits and the filled KV cache."""
    summaries = model.encode_images(images, sizes) if images is not None else None
    x = model.embed(tokens, summaries)
    cache = model.empty_cache(tokens.shape[0], dtype=x.dtype, device=x.device)
    h, cache = model.decode(x, cache, torch.arange(tokens.shape[1], device=x.device))
    return model.logits(h[:, -1]), cache


def decode_one(model: PixTokenLM, token: torch.Tensor, pos: int, cache):
    """One new word token (B,) at position ``pos``: returns its logits and the updated cache."""
    x = model.embed(token[:, None])
    h, cache = model.decode(x, cache, torch.tensor([pos], device=token.device))
    return model.logits(h[:, -1]), cache


@torch.no_grad()
def generate(model: PixTokenLM, tokens: torch.Tensor, images=None, sizes=None,
             sampling: Sampling = GREEDY) -> Iterator[torch.Tensor]:
    """Yield (B,) word tokens one step at a time until every sequence has hit a stop token."""
    cfg = model.cfg
    T = tokens.shape[1]
    max_new_tokens = min(sampling.max_new_tokens, cfg.max_seq_len - T)
    gen = torch.Generator(device=tokens.device).manual_seed(sampling.seed)
    logits, cache = prefill(model, tokens, images, sizes)
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    stop_t = torch.tensor(list(sampling.stop or ()), dtype=torch.long, device=tokens.device)
    for i in range(max_new_tokens):
        nxt = sample(logits[:, : cfg.text_vocab], sampling.temperature, sampling.top_k, sampling.top_p, gen)
        yield nxt
        done |= torch.isin(nxt, stop_t)
        if bool(done.all()) or i == max_new_tokens - 1:
            return
        logits, cache = decode_one(model, nxt, T + i, cache)


def generate_text(model: PixTokenLM, tokenizer, images, sizes, prompt: str = "",
                  sampling: Sampling = GREEDY) -> list[str]:
    """Caption a batch of letterboxed images (uint8 (N, S, S, 3), sizes (N, 2)) -> one string each."""
    ids = image_prompt(model.cfg.n_windows, tokenizer.encode(prompt) if prompt else ())
    tokens = torch.tensor([ids] * images.shape[0], device=images.device)
    steps = generate(model, tokens, images, sizes, sampling)
    out = collect_until_stop(steps, images.shape[0], sampling.stop)
    return [tokenizer.decode(ids) for ids in out]
