"""Suite stages: the device's own peaks, and training on the built-in demo data."""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.gpu.context import (
    DTYPES,
    PROMPT,
    Context,
)
from benchmarks.gpu.flops import training_step_flops
from benchmarks.gpu.measure import copy_bandwidth, matmul_peak, time_calls
from pixdeploy.model import PixTokenLM, split_losses


def stage_peaks(ctx: Context) -> dict:
    p = ctx.plan
    dtypes = ("bf16", "fp16", "fp32") if p.cuda else ("fp32",)
    matmul = {}
    for name in dtypes:
        n = p.matmul_n // 2 if p.cuda and name == "fp32" else p.matmul_n  # fp32 is ~15x slower on a GPU
        matmul[name] = matmul_peak(p.device, DTYPES[name], n, p.iters, p.warmup)
        ctx.matmul_tflops[name] = matmul[name]["tflops_p50"]
    copy_result = copy_bandwidth(p.device, p.copy_bytes, p.iters, p.warmup)
    ctx.copy_gbps = copy_result["gbps_p50"]
    return {"matmul": matmul, "copy": copy_result}


def demo_data(ctx: Context, n_batches: int, tmp: str) -> list[dict]:
    """Render the built-in demo set at the preset's size; tokenizer, config and batches for the run."""
    from pixdeploy.data import BatchStream, load_examples
    from pixdeploy.demo_data import make_demo_set
    from pixdeploy.tokenizer import Tokenizer

    p = ctx.plan
    train_txt, _ = make_demo_set(tmp, p.train_batch * n_batches, 1, ctx.cfg.image_size)
    examples = load_examples(train_txt)
    ctx.tokenizer = Tokenizer.train([t for ex in examples for t in ex.texts] + [PROMPT], 64)
    ctx.cfg = ctx.cfg.replace(text_vocab=ctx.tokenizer.vocab_size)
    stream = BatchStream(examples, ctx.tokenizer, ctx.cfg, p.train_batch, 0, 0)
    keys = ("tokens", "targets", "images", "sizes")
    return [{k: torch.as_tensor(b[k]).to(p.device) for k in keys} for b in map(stream.batch, range(n_batches))]


def train_one(ctx: Context, batches: list[dict], precision: str) -> tuple[dict, PixTokenLM]:
    from pixdeploy.training import TrainConfig, lr_at

    p, cfg = ctx.plan, ctx.cfg
    dtype = DTYPES[precision] if precision != "fp32" else None
    torch.manual_seed(0)
    model = PixTokenLM(cfg).to(p.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=p.cuda)
    scaler = torch.amp.GradScaler(p.device.type, enabled=precision == "fp16")  # fp16 gradients underflow
    tc = TrainConfig(steps=p.train_steps, warmup=max(1, p.train_steps // 10))
    losses, step = [], [0]
    bar = tqdm(total=p.train_steps, desc=f"train {precision}", file=sys.stderr, leave=False)

    def train_step(batch):
        for group in opt.param_groups:
            group["lr"] = lr_at(step[0], tc)
        with torch.autocast(p.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(batch["tokens"], batch["images"], batch["sizes"])
        loss = split_losses(logits, batch["targets"], cfg.text_vocab)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read once at the end: no host sync inside the timed steps
        step[0] += 1
        bar.update()

    warm = max(1, p.train_steps // 10)
    t = time_calls(train_step, batches, p.device, p.train_steps - warm, warm)
    bar.close()
    loss_values = torch.stack(losses).float().cpu().numpy()
    n_images = len(batches[0]["images"])
    seq_len = batches[0]["tokens"].shape[1]
    flops = training_step_flops(cfg, n_images, p.train_batch, seq_len)
    peak_dtype, peak = ctx.peak_for(precision)
    k = max(1, len(loss_values) // 10)
    result = {
        **t, "precision": precision, "steps": p.train_steps, "batch": p.train_batch, "images_per_step": n_images,
        "loss_first": float(loss_values[:k].mean()), "loss_last": float(loss_values[-k:].mean()),
        "all_finite": bool(np.isfinite(loss_values).all()),
        "pixel_tokens_per_s": n_images * cfg.image_size**2 / (t["p50_ms"] / 1e3),
        "tflops": flops / (t["p50_ms"] / 1e3) / 1e12,
    }
    result["loss_fell"] = result["loss_last"] < result["loss_first"]
    result["fraction_of_peak"] = result["tflops"] / peak
    result["peak_dtype"] = peak_dtype
    if precision == "fp16":
        result["final_loss_scale"] = float(scaler.get_scale())
    return result, model


def stage_train(ctx: Context) -> dict:
    p = ctx.plan
    precisions = ("bf16", "fp16") if p.cuda else ("fp32",)
    with tempfile.TemporaryDirectory() as tmp:
        batches = demo_data(ctx, 8, tmp)
    runs = {}
    for precision in precisions:
        runs[precision], model = train_one(ctx, batches, precision)
        if ctx.model is None:  # the first run's model (bf16 on CUDA) serves every later stage
            ctx.model = model.eval()
    ctx.model.requires_grad_(False)
    return {"params": ctx.model.num_params(), "text_vocab": ctx.cfg.text_vocab, "runs": runs}
