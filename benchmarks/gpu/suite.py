"""One command for a GPU: its peaks, training, the image block, window attention, the decoder, parity
across precisions and the exported graphs, all measured in one run.

    python -m benchmarks.gpu.suite                                       # paper-120m on the CUDA GPU
    python -m benchmarks.gpu.suite --device cpu --preset tiny --smoke    # every stage that needs no CUDA

Stages (DESIGN.md §7: warm-up, CUDA events, medians, real inputs, rotated buffers, peaks in the same run):
- peaks: a large matmul per dtype (TFLOP/s) and a device-to-device copy (GB/s).
- train: the preset on the built-in demo data with bf16 autocast, then fp16 autocast with the loss
  scaler (fp32 on CPU): loss falls, nothing non-finite, pixel tokens/s, achieved TFLOP/s.
- image_block: window summaries of real images at several batch sizes: eager fp32/bf16/fp16 with SDPA,
  the Triton kernel, torch.compile, CUDA graphs; achieved TFLOP/s as a fraction of the matmul peak.
- window_attention: the attention alone on real activations, every SDPA backend on the model's boolean
  mask (which run and how fast), flash with a plain causal mask as a speed reference, the Triton kernel
  (full and one query per window), each with its error against fp32.
- decoder: prefill of the image windows and a short prompt, then one-token decode over the fixed-size
  KV cache, eager and with CUDA graphs; per-token time against the weight-streaming bound.
- parity: bf16 and fp16 weights against fp32 on real images (embeddings, prefill logits, greedy tokens).
- onnx: the exported graphs through onnxruntime against PyTorch, timed against PyTorch on the CPU.

The model of every stage after ``train`` is the one that stage trained. One JSON goes to ``--out`` (or
``$OUT``, else benchmarks/results/), and a short table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import pixdeploy.model as model_module
from benchmarks.gpu.flops import decoder_flops, image_block_flops, training_step_flops
from benchmarks.gpu.measure import copy_bandwidth, device_name, matmul_peak, synchronize, time_calls
from benchmarks.gpu.report import goals, summary
from pixdeploy.config import PRESETS, preset
from pixdeploy.errors import PixdeployError
from pixdeploy.files import staged_file
from pixdeploy.model import PixTokenLM, split_losses, window_attention_sdpa

STAGES = ("peaks", "train", "image_block", "window_attention", "decoder", "parity", "onnx")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NEEDS_CUDA = "needs CUDA"
PROMPT = "the number"  # a short prompt after the image, in the demo captions' words


@dataclass(frozen=True)
class Plan:
    """How much of each stage to run: a full run on a GPU, or the smoke run that keeps the suite alive."""

    preset: str
    device: torch.device
    smoke: bool
    train_steps: int
    train_batch: int
    image_batches: tuple[int, ...]
    decode_batches: tuple[int, ...]
    iters: int
    warmup: int
    matmul_n: int
    copy_bytes: int
    greedy_steps: int = 32
    parity_images: int = 16
    onnx_graphs: tuple[str, ...] = ("image_encoder", "decoder")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def make_plan(preset_name: str, device: torch.device, smoke: bool, train_steps: int | None,
              train_batch: int | None) -> Plan:
    if smoke:
        # Small enough for CI on two cores; the decoder graph's export is left to tests/export.
        plan = Plan(preset_name, device, True, 8, 4, (1, 4), (1, 2), 5, 1, 512, 16 << 20,
                    greedy_steps=8, parity_images=4, onnx_graphs=("image_encoder",))
    else:
        # Batch 4 at 224x224 is about 200k pixel tokens a step and fits 80 GB with bf16 activations.
        plan = Plan(preset_name, device, False, 300, 4, (1, 8, 32), (1, 8), 30, 5,
                    8192 if device.type == "cuda" else 1024, (1 << 30) if device.type == "cuda" else 256 << 20)
    changes = {k: v for k, v in (("train_steps", train_steps), ("train_batch", train_batch)) if v is not None}
    return Plan(**{**plan.__dict__, **changes})


@dataclass
class Context:
    """What later stages take from earlier ones: the trained model, its tokenizer, real images, peaks."""

    plan: Plan
    cfg: object = None
    tokenizer: object = None
    model: PixTokenLM | None = None  # fp32 weights, on the device
    images: np.ndarray | None = None  # real images, letterboxed (N, S, S, 3) uint8
    sizes: np.ndarray | None = None
    matmul_tflops: dict = field(default_factory=dict)  # dtype name -> measured peak
    copy_gbps: float = float("nan")

    def image_batches(self, batch: int, rotations: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``rotations`` distinct batches of real images (each a different slice of the pool)."""
        out = []
        for r in range(rotations):
            idx = (np.arange(batch) + r * max(1, batch // 2 + 1)) % len(self.images)
            out.append((torch.from_numpy(self.images[idx]).to(self.plan.device),
                        torch.from_numpy(self.sizes[idx]).to(self.plan.device)))
        return out

    def peak_for(self, dtype_name: str) -> tuple[str, float]:
        """The measured matmul peak of that dtype, else the highest measured (NaN without a peaks stage)."""
        if not self.matmul_tflops:
            return "none", float("nan")
        if dtype_name in self.matmul_tflops:
            return dtype_name, self.matmul_tflops[dtype_name]
        best = max(self.matmul_tflops, key=self.matmul_tflops.get)
        return best, self.matmul_tflops[best]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


@contextlib.contextmanager
def attention(impl: str):
    """Which window attention the model runs: "sdpa" (the reference) or "default" (the model's own
    choice: the Triton kernel at CUDA inference when Triton is installed)."""
    saved = model_module.window_attention
    if impl == "sdpa":
        model_module.window_attention = window_attention_sdpa
    try:
        yield
    finally:
        model_module.window_attention = saved


def triton_ready(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, NEEDS_CUDA + " (on CPU the kernel runs only under Triton's interpreter, in tests)"
    from pixdeploy.kernels import window_attention_triton

    return (True, "") if window_attention_triton.is_available("cuda") else (False, "triton is not installed")


def cast_weights(model: PixTokenLM, dtype: torch.dtype) -> PixTokenLM:
    """A copy with weights in ``dtype``; RoPE tables stay fp32 (as in the fp16 graphs), norms and the
    softmax compute in fp32 inside the model anyway."""
    m = copy.deepcopy(model).to(dtype)
    for name, buf in model.named_buffers():
        setattr(m, name, buf)
    return m.eval()


def cuda_graphed(fn, static_inputs: list[torch.Tensor]):
    """Capture ``fn(*static_inputs)`` in a CUDA graph; the returned callable copies new inputs into the
    static buffers and replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compiles Triton kernels, autotunes, warms the allocator
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)

    def replay(inputs):
        for dst, src in zip(static_inputs, inputs):
            if dst is not src:
                dst.copy_(src)
        graph.replay()
        return out

    return replay


# ---- stages -------------------------------------------------------------------------------------------


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


def stage_image_block(ctx: Context) -> dict:
    p = ctx.plan
    ok_triton, why_not = triton_ready(p.device)
    models = {name: cast_weights(ctx.model, dt) for name, dt in DTYPES.items() if p.cuda or name == "fp32"}
    best_half = "bf16" if p.cuda else None
    rows, skipped = [], {}
    if not p.cuda:
        skipped.update({"eager bf16/fp16": NEEDS_CUDA + " (half-precision speed is a GPU question)",
                        "torch.compile": NEEDS_CUDA, "cuda_graph": NEEDS_CUDA})
    if not ok_triton:
        skipped["triton"] = why_not
    for batch in p.image_batches:
        inputs = ctx.image_batches(batch)
        flops = image_block_flops(ctx.cfg, batch)
        variants = [(f"eager {name} sdpa", m.encode_images, "sdpa", name) for name, m in models.items()]
        if ok_triton:
            variants += [(f"eager {name} triton", m.encode_images, "default", name) for name, m in models.items()]
        if p.cuda:
            variants.append((f"compile {best_half} sdpa", "compile", "sdpa", best_half))
            impl = "default" if ok_triton else "sdpa"
            variants += [(f"cuda_graph {name} {'triton' if ok_triton else 'sdpa'}", "graph", impl, name)
                         for name in ("bf16", "fp16")]
        for label, fn, impl, dtype_name in variants:
            say(f"image block: batch {batch}, {label}")
            row = {"batch": batch, "variant": label, "dtype": dtype_name}
            try:
                with torch.no_grad(), attention(impl):
                    model = models[dtype_name]
                    if fn == "compile":
                        compiled = torch.compile(model.encode_images, dynamic=False)
                        t0 = time.perf_counter()
                        compiled(*inputs[0])
                        synchronize(p.device)
                        row["compile_s"] = time.perf_counter() - t0
                        call = lambda x, c=compiled: c(*x)
                    elif fn == "graph":
                        replay = cuda_graphed(model.encode_images, [t.clone() for t in inputs[0]])
                        call = replay
                    else:
                        call = lambda x, f=fn: f(*x)
                    row.update(time_calls(call, inputs, p.device, p.iters, p.warmup))
            except Exception as e:  # recorded in the report: one variant failing must not hide the others
                row["error"] = first_line(e)
                rows.append(row)
                continue
            finally:
                if p.cuda:  # graph pools and compiled buffers of one variant must not crowd the next
                    torch.cuda.empty_cache()
            peak_dtype, peak = ctx.peak_for(dtype_name)
            row["ms_per_image"] = row["p50_ms"] / batch
            row["tflops"] = flops / (row["p50_ms"] / 1e3) / 1e12
            row["fraction_of_peak"] = row["tflops"] / peak
            row["peak_dtype"] = peak_dtype
            rows.append(row)
    return {"flops_per_image": image_block_flops(ctx.cfg, 1), "rows": rows, "skipped": skipped}


def real_attention_inputs(ctx: Context, batch: int, dtype: torch.dtype):
    """q, k, v and the key mask of the first image layer on real images (the trained model's own)."""
    model = ctx.model
    images, sizes = ctx.image_batches(batch, 1)[0]
    with torch.no_grad():
        ids, valid, pos = model.pixel_tokens(images, sizes)
        x = model.pix_emb(ids)
        cos, sin = model.image_cos[pos][:, None], model.image_sin[pos][:, None]
        blk = model.image_blocks[0]
        q, k, v = blk.attn.qkv(blk.attn_norm(x), cos, sin)
    return q.to(dtype), k.to(dtype), v.to(dtype), valid


def sdpa_backends(device: torch.device) -> list:
    from torch.nn.attention import SDPBackend

    order = torch._C._get_sdp_priority_order() if hasattr(torch._C, "_get_sdp_priority_order") else [1, 2, 0, 3]
    known = {b.value: b for b in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                  SDPBackend.CUDNN_ATTENTION)}
    return [known[v] for v in order if v in known]


def stage_window_attention(ctx: Context) -> dict:
    from torch.nn.attention import sdpa_kernel

    p = ctx.plan
    ok_triton, why_not = triton_ready(p.device)
    batch = max(b for b in p.image_batches if b <= 8)
    dtypes = ("fp32", "bf16", "fp16") if p.cuda else ("fp32",)
    q32, k32, v32, valid = real_attention_inputs(ctx, batch, torch.float32)
    P = q32.shape[2]
    last = torch.where(valid.any(1), (valid * torch.arange(P, device=valid.device)).argmax(1), P - 1)
    rows_idx = torch.arange(len(q32), device=q32.device)
    with torch.no_grad():
        ref = window_attention_sdpa(q32, k32, v32, valid)
    backends, rows = {}, []
    for name in dtypes:
        q, k, v = (t.to(DTYPES[name]) for t in (q32, k32, v32))
        inputs = [(q, k, v, valid)] + [(q.roll(r, 0), k.roll(r, 0), v.roll(r, 0), valid.roll(r, 0)) for r in (1, 2)]
        variants = {"sdpa default": (lambda x: window_attention_sdpa(*x), None)}
        for backend in sdpa_backends(p.device):
            variants[f"sdpa {backend.name.lower()}"] = (lambda x: window_attention_sdpa(*x), backend)
        if p.cuda and name != "fp32":
            # Flash takes no boolean mask; with the plain causal mask (padding keys NOT masked, so not
            # the model's answer) it is the speed any masked path is aiming at.
            variants["flash causal-only (reference speed, wrong mask)"] = (
                lambda x: torch.nn.functional.scaled_dot_product_attention(
                    x[0], x[1], x[2], is_causal=True, enable_gqa=True), "flash-causal")
        if ok_triton:
            from pixdeploy.kernels import window_attention_triton as kernels

            variants["triton"] = (lambda x: kernels.window_attention(*x), None)
        for label, (fn, backend) in variants.items():
            row = {"dtype": name, "variant": label, "windows": len(q32)}
            try:
                from torch.nn.attention import SDPBackend

                chosen = SDPBackend.FLASH_ATTENTION if backend == "flash-causal" else backend
                guard = sdpa_kernel(chosen) if chosen is not None else contextlib.nullcontext()
                with torch.no_grad(), guard:
                    out = fn(inputs[0])
                    if backend != "flash-causal":
                        row["max_abs_err_vs_fp32"] = float((out.float() - ref).abs().max())
                    row.update(time_calls(fn, inputs, p.device, p.iters, p.warmup))
                if backend not in (None, "flash-causal"):
                    backends[backend.name.lower()] = backends.get(backend.name.lower(), []) + [name]
            except Exception as e:  # recorded: e.g. flash has no kernel for a boolean mask
                row["error"] = first_line(e)
            rows.append(row)
        # One query per window (the last image layer): SDPA on one mask row vs the Triton form.
        q1 = q[rows_idx, :, last][:, :, None]
        last_in = [(q1, k, v, valid, last)] + [tuple(t.roll(r, 0) for t in (q1, k, v, valid, last)) for r in (1, 2)]
        want = ref[rows_idx, :, last][:, :, None]
        one = {"sdpa one-query": None}
        if ok_triton:
            one["triton one-query"] = kernels.window_attention_last
        for label, kernel in one.items():
            from pixdeploy.kernels.window_attention_triton import window_attention_last_sdpa

            fn = (lambda x: window_attention_last_sdpa(*x)) if kernel is None else (lambda x, f=kernel: f(*x))
            with torch.no_grad():
                row = {"dtype": name, "variant": label, "windows": len(q32),
                       "max_abs_err_vs_fp32": float((fn(last_in[0]).float() - want).abs().max()),
                       **time_calls(fn, last_in, p.device, p.iters, p.warmup)}
            rows.append(row)
    # SDPA's dispatcher takes the first backend in its priority order that accepts the inputs.
    order = [b.name.lower() for b in sdpa_backends(p.device)]
    default = {d: next((b for b in order if d in backends.get(b, [])), None) for d in dtypes}
    return {"mask": "boolean (windows, 1, P, P): causal & (key valid | own position)",
            "sdpa_backends_that_ran": backends, "sdpa_priority": order, "sdpa_default_backend": default,
            "triton": "ran" if ok_triton else why_not, "rows": rows}


def decoder_weight_bytes(model: PixTokenLM) -> int:
    """What one decode step must read: every decoder block, the final norm and the output head (a word
    embedding lookup reads one row)."""
    parts = [*model.blocks.parameters(), *model.norm.parameters(), *model.head.parameters()]
    return sum(t.numel() * t.element_size() for t in parts)


def stage_decoder(ctx: Context) -> dict:
    from pixdeploy.generation import generate
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
                result["rows"].append(graphed_decode(ctx, model, step, words, caches, T, batch, bound_ms,
                                                     tokens, images[0], generate, text_vocab))
    return result


def decode_row(batch: int, label: str, t: dict, bound_ms: float) -> dict:
    return {"batch": batch, "variant": label, **t, "tokens_per_s": batch / (t["p50_ms"] / 1e3),
            "per_token_vs_bound": t["p50_ms"] / bound_ms}


def graphed_decode(ctx, model, step, words, caches, T, batch, bound_ms, tokens, image, generate, text_vocab):
    """One decode step as a CUDA graph that also writes the new cache back into the static one (what a
    generation loop replays), timed, then checked to pick the same greedy tokens as eager generate()."""
    p = ctx.plan
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
        from pixdeploy.generation import prefill

        logits, cache = prefill(model, tokens, *image)
        for (k, v), (ck, cv) in zip(static_cache, cache):
            k.copy_(ck)
            v.copy_(cv)
        steps = min(16, ctx.cfg.max_seq_len - T)
        got = []
        for i in range(steps):
            nxt = logits[:, :text_vocab].argmax(-1)
            got.append(nxt)
            static_pos.fill_(T + i)
            logits = replay([nxt, static_pos]).clone()
        want = torch.stack(list(generate(model, tokens, *image, max_new_tokens=steps, stop=None)), 1)
        row["greedy_matches_eager"] = bool((torch.stack(got, 1) == want).all())
    return row


def stage_parity(ctx: Context) -> dict:
    from pixdeploy.export.parity import compare

    from pixdeploy.generation import generate, prefill
    from pixdeploy.sequence import image_prompt

    p = ctx.plan
    images = torch.from_numpy(ctx.images[: p.parity_images]).to(p.device)
    sizes = torch.from_numpy(ctx.sizes[: p.parity_images]).to(p.device)
    ids = image_prompt(ctx.cfg.n_windows, ctx.tokenizer.encode(PROMPT))
    tokens = torch.tensor([ids] * len(images), device=p.device)
    steps = min(p.greedy_steps, ctx.cfg.max_seq_len - len(ids))

    def answers(model):
        with torch.no_grad():
            emb = model.encode_images(images, sizes).float()
            logits, _ = prefill(model, tokens, images, sizes)
            greedy = torch.stack(list(generate(model, tokens, images, sizes, max_new_tokens=steps, stop=None)), 1)
        return emb.cpu().numpy(), logits.float().cpu().numpy(), greedy.cpu().numpy()

    ref = answers(ctx.model)
    out = {"images": len(images), "greedy_steps": steps, "reference": "fp32 weights, same device"}
    for name in ("bf16", "fp16"):
        emb, logits, greedy = answers(cast_weights(ctx.model, DTYPES[name]))
        e, lg = compare(emb, ref[0]), compare(logits, ref[1])
        out[name] = {"embed_cosine_min": e["cosine_min"], "embed_max_abs": e["max_abs"],
                     "logits_cosine_min": lg["cosine_min"], "logits_max_abs": lg["max_abs"],
                     "greedy_token_agreement": float((greedy == ref[2]).mean()),
                     "greedy_sequences_identical": float((greedy == ref[2]).all(1).mean()),
                     "all_finite": bool(np.isfinite(emb).all() and np.isfinite(logits).all())}
    return out


def stage_onnx(ctx: Context) -> dict:
    import onnxruntime as ort
    from pixdeploy.export.onnx_export import export_graph, graph_specs
    from pixdeploy.export.parity import compare

    from benchmarks.timing import interleaved

    p = ctx.plan
    model = copy.deepcopy(ctx.model).float().cpu().eval()
    available = ort.get_available_providers()
    providers = [x for x in ("CUDAExecutionProvider", "CPUExecutionProvider") if x in available]
    out = {"onnxruntime": ort.__version__, "providers_available": available, "providers_used": providers,
           "graphs": {}}
    n = 2 if p.smoke else 1  # a paper-size image takes seconds through PyTorch on the CPU
    images, sizes = ctx.images[:n], ctx.sizes[:n]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in graph_specs(ctx.cfg):
            if spec.name not in p.onnx_graphs:
                continue
            say(f"onnx: exporting {spec.name}")
            path = Path(tmp) / f"{spec.name}.onnx"
            t0 = time.perf_counter()
            export_graph(model, spec, path)
            export_s = time.perf_counter() - t0
            sess = ort.InferenceSession(str(path), providers=providers)
            if spec.name == "image_encoder":
                feed = {"images": images, "sizes": sizes}
                with torch.no_grad():
                    ref_fn = lambda: model.encode_images(torch.from_numpy(images), torch.from_numpy(sizes)).numpy()
            else:
                with torch.no_grad():
                    embeds = model.embed(torch.tensor([[1, 4, 5]] * n), None).numpy()
                cache = {i.name: np.zeros([n, *i.shape[1:]], np.float32) for i in sess.get_inputs()
                         if i.name.startswith("past_")}
                feed = {"embeds": embeds, "input_pos": np.arange(embeds.shape[1]), **cache}

                def ref_fn(embeds=embeds):
                    empty = model.empty_cache(n)
                    h, _ = model.decode(torch.from_numpy(embeds), empty, torch.arange(embeds.shape[1]))
                    return model.logits(h[:, -1]).numpy()
            got = sess.run(None, feed)[0]
            with torch.no_grad():
                want = ref_fn()
                timed = interleaved({"onnxruntime": lambda s=sess, f=feed: s.run(None, f), "torch_cpu_eager": ref_fn},
                                    iters=3 if not p.smoke else p.iters, warmup=1)
            out["graphs"][spec.name] = {"export_s": export_s, "batch": n, "vs_torch_fp32_cpu": compare(got, want),
                                        "timing": timed, "speedup_vs_torch_cpu_p50":
                                        timed["torch_cpu_eager"]["p50_ms"] / timed["onnxruntime"]["p50_ms"]}
    if "CUDAExecutionProvider" not in available:
        out["note"] = "onnxruntime-gpu is not installed: the graphs ran on onnxruntime's CPU provider"
    return out


STAGE_FNS = {"peaks": stage_peaks, "train": stage_train, "image_block": stage_image_block,
             "window_attention": stage_window_attention, "decoder": stage_decoder, "parity": stage_parity,
             "onnx": stage_onnx}


# ---- driver -------------------------------------------------------------------------------------------


def load_real_images(ctx: Context) -> None:
    """scikit-learn's photos and handwritten digits, plus rendered demo numbers: real pixels."""
    from pixdeploy.export.parity import default_parity_images

    from pixdeploy.demo_data import render_number
    from pixdeploy.folding import prepare_batch

    rng = np.random.default_rng(1)
    renders = [render_number(int(n), rng, ctx.cfg.image_size) for n in rng.integers(0, 100, 8)]
    ctx.images, ctx.sizes = prepare_batch(default_parity_images() + renders, ctx.cfg.image_size)


def run_suite(plan: Plan, stages: tuple[str, ...]) -> dict:
    ctx = Context(plan, cfg=preset(plan.preset))
    torch.manual_seed(0)
    load_real_images(ctx)
    report = {"suite": "gpu", "preset": plan.preset, "device": str(plan.device),
              "device_name": device_name(plan.device),
              "smoke": plan.smoke, "torch": torch.__version__, "cuda": torch.version.cuda,
              "plan": {k: (str(v) if k == "device" else v) for k, v in plan.__dict__.items()}, "stages": {}}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    for name in STAGES:
        if name not in stages:
            report["stages"][name] = {"skipped": "not asked for (--stages)"}
            continue
        if name != "peaks" and name != "train" and ctx.model is None:
            raise PixdeployError(f"stage {name} needs the model the train stage makes; add train to --stages")
        say(f"== {name}")
        t0 = time.perf_counter()
        report["stages"][name] = {**STAGE_FNS[name](ctx), "stage_s": time.perf_counter() - t0}
        if name == "peaks" and plan.cuda:
            report["stages"][name]["memory_gb"] = torch.cuda.get_device_properties(plan.device).total_memory / 2**30
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu.suite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--preset", default="paper-120m", choices=list(PRESETS))
    ap.add_argument("--smoke", action="store_true", help="a few steps and iterations of each stage")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--train-steps", type=int)
    ap.add_argument("--train-batch", type=int)
    ap.add_argument("--out", help="folder for the JSON (default: $OUT, else benchmarks/results)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.device not in ("cuda", "cpu"):
            raise PixdeployError(f"--device must be cuda or cpu, got {args.device!r}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise PixdeployError("--device cuda: no CUDA GPU is visible to torch; use --device cpu for the CPU stages")
        for name in ("train_steps", "train_batch"):
            value = getattr(args, name)
            if value is not None and value < 2:
                raise PixdeployError(f"--{name.replace('_', '-')} must be at least 2, got {value}")
        out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).parent.parent / "results")
        if out_dir.exists() and not out_dir.is_dir():
            raise PixdeployError(f"--out {out_dir} is a file; give a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        device = torch.device(args.device)
        plan = make_plan(args.preset, device, args.smoke, args.train_steps, args.train_batch)
        report = run_suite(plan, tuple(args.stages))
        report["goals"] = goals(report)
        path = out_dir / f"gpu_suite_{args.preset}_{device.type}{'_smoke' if args.smoke else ''}.json"
        with staged_file(path) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        say(f"wrote {path}")
        print(summary(report))
        return 0
    except PixdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
