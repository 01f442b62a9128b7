"""Fused window attention in Triton: causal inside each pixel window, padding keys masked, grouped-query.

Same contract as `pixdeploy.model.window_attention_sdpa` (the reference it is tested against), without
materialising a (windows, P, P) boolean mask: the mask is computed in the kernel from the key-valid flags,
so every SDPA backend's restriction on boolean masks (flash attention takes none) stops mattering. It is
also the kernel a TensorRT plugin for ``pixdeploy::WindowAttention`` would carry.

Two entry points:
- `window_attention(q, k, v, key_valid)`: every pixel of every window queries (the image block).
- `window_attention_last(q, k, v, key_valid, last)`: one query per window, at its last valid pixel (the
  last image layer, where only that pixel's state leaves the block).

`compile_ahead_of_time` builds either kernel for a GPU architecture without a GPU present (the cubin a
TensorRT plugin ships).

Shapes: q (NW, H, P, D), k/v (NW, K, P, D) with H a multiple of K, key_valid (NW, P) bool. Softmax runs in
fp32 (exp2 with the scale folded in); 16-bit inputs feed the tensor cores as 16-bit, like flash attention.
Triton is optional (CUDA machines get it with torch): without it `is_available()` is False and the model
keeps its SDPA path. ``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors through Triton's
interpreter (a check of their logic, not their speed).
"""

from __future__ import annotations

import functools
import math
import os

import torch

from pixdeploy.errors import PixdeployError

try:  # optional dependency: only the CUDA inference path uses it
    import triton
    import triton.language as tl
except ImportError:
    triton = None

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """Triton's CPU interpreter is on (it is chosen when the kernels are defined, at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def is_available(device_type: str = "cuda") -> bool:
    """Triton is installed and can run on ``device_type`` (CUDA, or CPU under the interpreter)."""
    if triton is None:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return device_type == "cpu" and interpreting()


def _check(q, k, v, key_valid) -> tuple[int, int, int, int, int]:
    if not is_available(q.device.type):
        why = "triton is not installed" if triton is None else f"triton cannot run on {q.device.type}"
        raise PixdeployError(f"fused window attention unavailable: {why}")
    NW, H, P, D = q.shape
    K = k.shape[1]
    if k.shape != (NW, K, P, D) or v.shape != k.shape or H % K or key_valid.shape != (NW, P):
        raise PixdeployError(f"window attention shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)}, key_valid {tuple(key_valid.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise PixdeployError(f"window attention needs one float dtype for q, k, v, got {q.dtype}/{k.dtype}/{v.dtype}")
    return NW, H, K, P, D


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs would silently become TF32 on tensor cores; the reference is exact fp32, so ask for IEEE.
    return "ieee" if dtype == torch.float32 else "tf32"


if triton is not None:
    # Few configurations: P is 256 in the paper (64 in the tiny preset) and D is 64; the interpreter
    # runs one, since it would time each.
    _CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                for m, n, w, s in ((64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (128, 128, 8, 2))]
    if interpreting():
        _CONFIGS = _CONFIGS[:1]

    @triton.autotune(configs=_CONFIGS, key=["P", "D", "GROUP"])
    @triton.jit
    def _window_attention_kernel(
        Q, K, V, VALID, OUT,
        sq_w, sq_h, sq_p, sq_d, sk_w, sk_h, sk_p, sk_d, sv_w, sv_h, sv_p, sv_d, sm_w, sm_p,
        so_w, so_h, so_p, so_d,
        P, D, scale_log2,
        GROUP: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        win = tl.program_id(0).to(tl.int64)  # windows x strides passes 2**31 at batch 32
        head = tl.program_id(1)
        first_query = tl.program_id(2) * BLOCK_M
        kv_head = head // GROUP
        offs_m = first_query + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q = tl.load(Q + win * sq_w + head * sq_h + offs_m[:, None] * sq_p + offs_d[None, :] * sq_d,
                    mask=(offs_m[:, None] < P) & d_ok[None, :], other=0.0)
        k_base = K + win * sk_w + kv_head * sk_h
        v_base = V + win * sv_w + kv_head * sv_h
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # Causal: keys past this block's last query are never seen.
        for start in range(0, tl.minimum(first_query + BLOCK_M, P), BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_ok = offs_n < P
            kt = tl.load(k_base + offs_n[None, :] * sk_p + offs_d[:, None] * sk_d,
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
            s = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2
            valid = tl.load(VALID + win * sm_w + offs_n * sm_p, mask=n_ok, other=0) != 0
            # A padding query may see itself, so no row is empty (its output is never used).
            own = offs_n[None, :] == offs_m[:, None]
            allowed = (offs_n[None, :] <= offs_m[:, None]) & (valid[None, :] | own) & n_ok[None, :]
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row whose keys so far are all masked keeps m = -inf; shift by 0 instead of -inf - -inf.
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_shift)
            p = tl.exp2(s - m_shift[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vb = tl.load(v_base + offs_n[:, None] * sv_p + offs_d[None, :] * sv_d,
                         mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # (N, D)
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=DOT_PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(OUT + win * so_w + head * so_h + offs_m[:, None] * so_p + offs_d[None, :] * so_d,
                 out.to(OUT.dtype.element_ty), mask=(offs_m[:, None] < P) & d_ok[None, :])

    @triton.jit
    def _window_attention_last_kernel(
        Q, K, V, VALID, LAST, OUT,
        sq_w, sq_h, sq_d, sk_w, sk_h, sk_p, sk_d, sv_w, sv_h, sv_p, sv_d, sm_w, sm_p,
        so_w, so_h, so_d,
        P, D, scale_log2,
        GROUP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # One query row: a dot product per key is cheaper than padding the row to a 16-row tensor-core tile.
        win = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        kv_head = head // GROUP
        last = tl.load(LAST + win)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q = tl.load(Q + win * sq_w + head * sq_h + offs_d * sq_d, mask=d_ok, other=0.0).to(tl.float32)
        k_base = K + win * sk_w + kv_head * sk_h
        v_base = V + win * sv_w + kv_head * sv_h
        m_i = tl.full([1], float("-inf"), tl.float32)
        l_i = tl.zeros([1], tl.float32)
        acc = tl.zeros([BLOCK_D], tl.float32)
        for start in range(0, last + 1, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_ok = offs_n < P
            kb = tl.load(k_base + offs_n[:, None] * sk_p + offs_d[None, :] * sk_d,
                         mask=n_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # (N, D)
            s = tl.sum(kb * q[None, :], 1) * scale_log2
            valid = tl.load(VALID + win * sm_w + offs_n * sm_p, mask=n_ok, other=0) != 0
            allowed = (offs_n <= last) & (valid | (offs_n == last)) & n_ok
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 0))
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_shift)
            p = tl.exp2(s - m_shift)
            l_i = l_i * alpha + tl.sum(p, 0)
            vb = tl.load(v_base + offs_n[:, None] * sv_p + offs_d[None, :] * sv_d,
                         mask=n_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * vb, 0)
            m_i = m_new
        out = acc / l_i
        tl.store(OUT + win * so_w + head * so_h + offs_d * so_d, out.to(OUT.dtype.element_ty), mask=d_ok)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """q (NW, H, P, D), k/v (NW, K, P, D), key_valid (NW, P) bool -> (NW, H, P, D) in q's dtype.

    The result is a (NW, H, P, D) view of a (NW, P, H, D) buffer, so the output projection's
    transpose-and-reshape needs no copy."""
    NW, H, K, P, D = _check(q, k, v, key_valid)
    out = torch.empty((NW, P, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    grid = lambda meta: (NW, H, triton.cdiv(P, meta["BLOCK_M"]))
    _window_attention_kernel[grid](
        q, k, v, key_valid, out, *q.stride(), *k.stride(), *v.stride(), *key_valid.stride(), *out.stride(),
        P, D, LOG2E / math.sqrt(D),
        GROUP=H // K, BLOCK_D=max(16, triton.next_power_of_2(D)), DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out


def window_attention_last(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                          last: torch.Tensor) -> torch.Tensor:
    """One query per window: q (NW, H, 1, D) is the query of pixel ``last`` (NW,) of its window; keys
    and values cover the whole window. Returns (NW, H, 1, D): that pixel's attention output."""
    NW, H, _, D = q.shape
    if q.shape[2] != 1 or last.shape != (NW,):
        raise PixdeployError(f"one-query window attention needs q (NW, H, 1, D) and last (NW,), "
                             f"got q {tuple(q.shape)}, last {tuple(last.shape)}")
    _, _, K, P, _ = _check(q.expand(NW, H, k.shape[2], D), k, v, key_valid)
    out = torch.empty((NW, 1, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    _window_attention_last_kernel[(NW, H)](
        q, k, v, key_valid, last, out,
        q.stride(0), q.stride(1), q.stride(3), *k.stride(), *v.stride(), *key_valid.stride(),
        out.stride(0), out.stride(1), out.stride(3),
        P, D, LOG2E / math.sqrt(D),
        GROUP=H // K, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_N=64,
    )
    return out


def window_attention_last_sdpa(q, k, v, key_valid, last):
    """Reference for `window_attention_last`: SDPA with the one row of the window mask that pixel has."""
    P = k.shape[2]
    idx = torch.arange(P, device=q.device)
    own = idx[None, :] == last[:, None]
    mask = (idx[None, :] <= last[:, None]) & (key_valid | own)  # (NW, P)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                                            enable_gqa=True)


_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_ahead_of_time(arch: int, dtype: torch.dtype, group: int, head_dim: int, one_query: bool = False,
                          config_index: int = 0):
    """Compile a kernel for CUDA compute capability ``arch`` (90: H100, 87: Jetson AGX Orin) with no GPU
    needed; returns Triton's compiled kernel (``.asm["cubin"]``, ``.asm["ptx"]``, ``.metadata``).
    ``config_index`` picks one of the autotuned block configurations of the full form."""
    if triton is None:
        raise PixdeployError("compiling the window-attention kernels needs triton (pip install triton)")
    if interpreting():
        raise PixdeployError("TRITON_INTERPRET is set: kernels are interpreted, not compiled")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _window_attention_last_kernel if one_query else _window_attention_kernel.fn
    pointers = {"Q", "K", "V", "OUT"}
    constexprs = {"GROUP": group, "BLOCK_D": max(16, triton.next_power_of_2(head_dim))}
    options = {}
    if one_query:
        constexprs["BLOCK_N"] = 64
    else:
        config = _CONFIGS[config_index]
        constexprs |= {"DOT_PRECISION": _dot_precision(dtype), **config.kwargs}
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + _TRITON_DTYPES[dtype]
        else:
            signature[name] = {"VALID": "*i1", "LAST": "*i64", "scale_log2": "fp32"}.get(name, "i32")
    source = ASTSource(kernel, signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
