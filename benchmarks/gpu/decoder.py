"""Suite stage: prefill and one-token decode over the fixed-size KV cache, eager and as CUDA graphs."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.gpu.context import (
    DTYPES,
    NEEDS_CUDA,
    PROMPT,
    Context,
    cast_weights,
    say,
)
from benchmarks.gpu.flops import decoder_flops
from benchmarks.gpu.measure import cuda_graphed, time_calls
from pixdeploy.model import PixTokenLM


def decoder_weight_bytes(model: PixTokenLM) -> int:
    """What one decode step must read: every decoder block, the final norm and the output head (a word
    embedding lookup reads one row)."""
    parts = [*model.blocks.parameters(), *model.norm.parameters(), *model.head.parameters()]
    return sum(t.numel() * t.element_size() for t in parts)


def stage_decoder(ctx: Context) -> dict:
    from pixdeploy.sequence import image_prompt

    p = ctx.plan
    dtype_name = "bf16" if p.cuda else "fp32"  # decode streams weights: 16-bit halves the bytes
    model = cast_weights(ctx.model, DTYPES[dtype_name])
    ids = image_prompt(ctx.cfg.n_windows, ctx.tokenizer.encode(PROMPT))
    T = len(ids)
    weight_bytes = decoder_weight_bytes(model)
    bound_ms = weight_bytes / (ctx.copy_gbps * 1e9) * 1e3
    text_vocab = ctx.cfg.text_vocab
    result = {"dtype": dtype_name, "prompt_tokens": T, "windows": ctx.cfg.n_windows,
              "decoder_weight_bytes": weight_bytes, "weight_streaming_bound_ms": bound_ms, "rows": []}
    if not p.cuda:
        result["skipped"] = {"cuda_graph": NEEDS_CUDA}
    rng = np.random.default_rng(0)
    for batch in p.decode_batches:
        images = ctx.image_batches(batch)
        tokens = torch.tensor([ids] * batch, device=p.device)
        pos = torch.arange(T, device=p.device)
        with torch.no_grad():
            xs = [model.embed(tokens, model.encode_images(*im)) for im in images]
            empty = model.empty_cache(batch, device=p.device)
            caches = [model.decode(x, empty, pos)[1] for x in xs]
        step_pos = torch.tensor([T], device=p.device)
        words = [torch.as_tensor(rng.integers(6, text_vocab, batch), device=p.device) for _ in xs]
        say(f"decoder: batch {batch}")
        with torch.no_grad():
            prefill = time_calls(lambda x, e=empty, at=pos: model.decode(x, e, at), xs, p.device, p.iters, p.warmup)
            prefill_flops = decoder_flops(ctx.cfg, batch, T)
            result["rows"].append({"batch": batch, "variant": "prefill eager", **prefill,
                                   "tokens_per_s": batch * T / (prefill["p50_ms"] / 1e3),
                                   "tflops": prefill_flops / (prefill["p50_ms"] / 1e3) / 1e12})

            def step(word, cache, at):
                h, new = model.decode(model.embed(word[:, None]), cache, at)
                return model.logits(h[:, -1]), new

            eager = time_calls(lambda wc, at=step_pos: step(wc[0], wc[1], at), list(zip(words, caches)), p.device,
                               p.iters, p.warmup)
            result["rows"].append(decode_row(batch, "decode eager", eager, bound_ms))
            if p.cuda:
                result["rows"].append(graphed_decode(ctx, model, step, words, caches, tokens, images[0], bound_ms))
    return result


def decode_row(batch: int, label: str, t: dict, bound_ms: float) -> dict:
    return {"batch": batch, "variant": label, **t, "tokens_per_s": batch / (t["p50_ms"] / 1e3),
            "per_token_vs_bound": t["p50_ms"] / bound_ms}


def graphed_decode(ctx: Context, model: PixTokenLM, step, words: list, caches: list, tokens: torch.Tensor,
                   image: tuple, bound_ms: float) -> dict:
    """One decode step as a CUDA graph that also writes the new cache back into the static one (what a
    generation loop replays), timed, then checked to pick the same greedy tokens as eager generate() on
    the prompt ``tokens`` with ``image``."""
    from pixdeploy.generation import Sampling, generate, prefill

    p = ctx.plan
    batch, T = tokens.shape
    static_word = words[0].clone()
    static_pos = torch.tensor([T], device=p.device)
    static_cache = [(k.clone(), v.clone()) for k, v in caches[0]]

    def graph_step(word, pos):
        logits, new = step(word, static_cache, pos)
        for (k, v), (nk, nv) in zip(static_cache, new):
            k.copy_(nk)
            v.copy_(nv)
        return logits

    with torch.no_grad():
        replay = cuda_graphed(graph_step, [static_word, static_pos])
        t = time_calls(lambda w: replay([w, static_pos]), words, p.device, p.iters, p.warmup)
        row = decode_row(batch, "decode cuda_graph", t, bound_ms)
        # Greedy generation through the graph, from a fresh prefill of image 0's batch.
        logits, cache = prefill(model, tokens, *image)
        for (k, v), (ck, cv) in zip(static_cache, cache):
            k.copy_(ck)
            v.copy_(cv)
        steps = min(16, ctx.cfg.max_seq_len - T)
        got = []
        for i in range(steps):
            nxt = logits[:, : ctx.cfg.text_vocab].argmax(-1)
            got.append(nxt)
            static_pos.fill_(T + i)
            logits = replay([nxt, static_pos]).clone()
        want = torch.stack(list(generate(model, tokens, *image, Sampling(max_new_tokens=steps, stop=None))), 1)
        row["greedy_matches_eager"] = bool((torch.stack(got, 1) == want).all())
    return row
