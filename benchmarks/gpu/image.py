"""Suite stages: the image block end to end, and its window attention alone."""

from __future__ import annotations

import contextlib
import time

import torch

from benchmarks.gpu.context import (
    DTYPES,
    NEEDS_CUDA,
    Context,
    attention,
    cast_weights,
    first_line,
    say,
    triton_ready,
)
from benchmarks.gpu.flops import image_block_flops
from benchmarks.gpu.measure import cuda_graphed, synchronize, time_calls
from pixdeploy.model import window_attention_sdpa


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
    return {"flops_per_image": image_block_flops(ctx.cfg, 1), "rows": rows, "skipped": skipped,
            "attention": "sdpa rows: SDPA's own choice for the boolean window mask (flash takes none; the "
                         "window_attention stage says which backend that is); triton rows: the mask is built "
                         "inside the fused kernel"}


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
