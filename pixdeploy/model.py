"""Reference PyTorch model of the unified pix-token / word-token LM (arXiv 2605.14028).

Reads top to bottom, smallest parts first: norm -> RoPE -> attention -> MLP -> block -> model.
Every pixel is a token: colours are folded to ``L**3`` ids, each with its own embedding. An image block
runs causal attention inside non-overlapping ``window x window`` pixel windows; the state of each
window's last valid pixel is that window's summary. The summaries are spliced into the word tokens
between ``<|image|>`` and ``<|/image|>``, and a LLaMA-style decoder runs over everything. One head
predicts word tokens and colour tokens alike.

Export-friendly numerics: RoPE as real cos/sin tables, norms in fp32, a fixed-size KV cache written by
index (shapes never change), no complex tensors, no data-dependent Python control flow.

Shape letters: N images, B sequences, W windows per image, P pixels per window, T tokens,
H query heads, K key/value heads, D head dim, C model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixdeploy.config import IGNORE, IMAGE_SLOT, ModelConfig
from pixdeploy.folding import fold_torch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Statistics in fp32: fp16 sums of squares overflow, the top cause of NaN in deployed LMs.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if cfg.rope_llama31_scaling:
        # LLaMA-3.1: slow down long wavelengths by 8, keep short ones, interpolate between.
        factor, low, high, old_ctx = 8.0, 1.0, 4.0, 8192
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv_freq = torch.where(mid, scaled, inv_freq)
    return inv_freq


def rope_tables(cfg: ModelConfig, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_pos, D/2) cos and sin tables in fp32."""
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float64), rope_inv_freq(cfg))
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """x: (.., T, D); cos/sin broadcastable to (.., T, D/2). Rotates the two halves of D."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def window_attention(q, k, v, key_valid):
    """Causal attention inside each window, never attending to padding (`window_attention_sdpa`).

    At inference on CUDA, with Triton installed, the fused kernel of
    `pixdeploy.kernels.window_attention_triton` computes the same thing without a (P, P) mask; training
    (autograd), torch.compile (which fuses on its own) and the CPU keep SDPA.
    """
    if q.is_cuda and q.shape[2] == k.shape[2] and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        from pixdeploy.kernels import window_attention_triton as fused  # lazy: Triton is optional

        if fused.is_available("cuda"):
            return fused.window_attention(q, k, v, key_valid)
    return window_attention_sdpa(q, k, v, key_valid)


def window_attention_sdpa(q, k, v, key_valid):
    """Causal attention inside each window, never attending to padding: the reference.

    q: (NW, H, P, D); k, v: (NW, K, P, D); key_valid: (NW, P) bool. A padding query may attend to
    itself so its row is never empty (its output is never used for a valid pixel).
    """
    P = q.shape[2]
    causal = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()
    eye = torch.eye(P, dtype=torch.bool, device=q.device)
    mask = causal & (key_valid[:, None, None, :] | eye)  # (NW, 1, P, P)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def window_summary_attention(q, k, v, key_valid, query_pos):
    """`window_attention` for one query per window, the pixel at ``query_pos`` (its row of the full form).

    q: (NW, H, 1, D); k, v: (NW, K, P, D); key_valid: (NW, P) bool; query_pos: (NW,) int64.
    """
    keys = torch.arange(k.shape[2], device=q.device)[None, :]
    at = keys == query_pos[:, None]
    mask = (keys <= query_pos[:, None]) & (key_valid | at)  # (NW, P)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], enable_gqa=True)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def qkv(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, y):
        B, _, T, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block; the attention pattern is the caller's (window or causal+cache)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward_window(self, x, cos, sin, key_valid):
        q, k, v = self.attn.qkv(self.attn_norm(x), cos, sin)
        x = x + self.attn.out(window_attention(q, k, v, key_valid))
        return x + self.mlp(self.mlp_norm(x))

    def forward_window_summary(self, x, cos, sin, key_valid, last):
        """`forward_window` for the row ``last`` (NW,) of each window only -> (NW, C). Keys and values
        still come from every pixel; the query, attention output, MLP and norm run on one row."""
        rows = torch.arange(x.shape[0], device=x.device)
        x_last = x[rows, last][:, None]  # (NW, 1, C)
        h = self.attn_norm(x)
        a = self.attn
        NW, P, _ = x.shape
        q = a.wq(h[rows, last][:, None]).view(NW, 1, a.n_heads, a.head_dim).transpose(1, 2)
        k = a.wk(h).view(NW, P, a.n_kv_heads, a.head_dim).transpose(1, 2)
        v = a.wv(h).view(NW, P, a.n_kv_heads, a.head_dim).transpose(1, 2)
        q = apply_rope(q, cos[rows, :, last][:, :, None], sin[rows, :, last][:, :, None])
        k = apply_rope(k, cos, sin)
        x_last = x_last + a.out(window_summary_attention(q, k, v, key_valid, last))
        return (x_last + self.mlp(self.mlp_norm(x_last)))[:, 0]

    def forward_causal(self, x, cos, sin, kv=None, input_pos=None):
        """Without ``kv``: plain causal attention over x. With ``kv = (k_cache, v_cache)`` of shape
        (B, K, max_seq, D): write this step's keys at ``input_pos`` and attend to every cached position
        up to each query's own. Returns (x, new_kv)."""
        q, k, v = self.attn.qkv(self.attn_norm(x), cos, sin)
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            new_kv = None
        else:
            # scatter on the position axis exports as one ScatterElements; index_copy exported as
            # ScatterND wrapped in two transposes of the whole cache, most of a decode step's time.
            where = input_pos[None, None, :, None].expand_as(k)
            k_all = kv[0].scatter(2, where, k.to(kv[0].dtype))
            v_all = kv[1].scatter(2, where, v.to(kv[1].dtype))
            seen = torch.arange(k_all.shape[2], device=x.device)[None, :] <= input_pos[:, None]  # (T, S)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=seen, enable_gqa=True)
            new_kv = (k_all, v_all)
        x = x + self.attn.out(y)
        return x + self.mlp(self.mlp_norm(x)), new_kv


def summary_index(valid):
    """(NW, P) valid mask -> (NW,) index of each window's last valid pixel (the last pixel when none is)."""
    P = valid.shape[1]
    idx = torch.arange(P, device=valid.device)
    return torch.where(valid.any(1), (valid * idx).argmax(1), P - 1)


def partition_windows(t, window: int):
    """(N, S, S, ...) -> (N * W, P, ...): windows in raster order, pixels in raster order inside."""
    N, S = t.shape[0], t.shape[1]
    n = S // window
    rest = t.shape[3:]
    t = t.reshape(N, n, window, n, window, *rest).transpose(2, 3)
    return t.reshape(N * n * n, window * window, *rest)


class PixTokenLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.pix_emb = nn.Embedding(cfg.n_colors + 1, cfg.dim)  # + 1: the padding token
        self.image_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.image_layers))
        self.image_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.tok_emb = nn.Embedding(cfg.text_vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_out, bias=False)
        image_cos, image_sin = rope_tables(cfg, cfg.image_size**2)
        text_cos, text_sin = rope_tables(cfg, cfg.max_seq_len)
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("image_cos", image_cos, persistent=False)
        self.register_buffer("image_sin", image_sin, persistent=False)
        self.register_buffer("text_cos", text_cos, persistent=False)
        self.register_buffer("text_sin", text_sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 style: scale residual projections by depth
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * (cfg.n_layers + cfg.image_layers)))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- image block ----

    def pixel_tokens(self, images, sizes):
        """(N, S, S, 3) uint8 + (N, 2) sizes -> per-window ids, valid mask, global positions: (N*W, P)."""
        ids = fold_torch(images, sizes, self.cfg.fold)  # (N, S, S)
        valid = ids != self.cfg.pixel_pad_id
        # RoPE positions: global raster index with padding skipped; padding reuses its predecessor's. Counted in
        # float32, exact below 2**24 pixels (ModelConfig caps image_size): TensorRT's ONNX parser documents CumSum
        # and Clip for floating-point types only.
        pos = (valid.flatten(1).float().cumsum(1) - 1).clamp(min=0).long().view_as(ids)
        w = self.cfg.window
        return partition_windows(ids, w), partition_windows(valid, w), partition_windows(pos, w)

    def image_states(self, images, sizes):
        """Hidden state of every pixel after the image block: (N*W, P, C), plus the window masks."""
        ids, valid, pos = self.pixel_tokens(images, sizes)
        x = self.pix_emb(ids)
        cos, sin = self.image_cos[pos][:, None], self.image_sin[pos][:, None]  # (N*W, 1, P, D/2)
        for blk in self.image_blocks:
            x = blk.forward_window(x, cos, sin, valid)
        return x, valid

    def encode_images(self, images, sizes, prune: bool = True):
        """Window summaries (N, W, C): the state of each window's last valid pixel.

        A window that is all padding (letterbox) takes its last pixel's state, which depends on the
        image size only, never on pixel values.

        ``prune``: only the summary rows leave the block, so the last layer runs its query, attention
        output, MLP and norms on one row per window (about a fifth of the image FLOPs at 5 layers; the
        same outputs up to float rounding). Inference and export prune; training (`forward`) runs every
        row, the reference form the pruned one is tested against.
        """
        if not prune:
            x, valid = self.image_states(images, sizes)
            summaries = x[torch.arange(x.shape[0], device=x.device), summary_index(valid)]
        else:
            ids, valid, pos = self.pixel_tokens(images, sizes)
            x = self.pix_emb(ids)
            cos, sin = self.image_cos[pos][:, None], self.image_sin[pos][:, None]  # (N*W, 1, P, D/2)
            for blk in self.image_blocks[:-1]:
                x = blk.forward_window(x, cos, sin, valid)
            summaries = self.image_blocks[-1].forward_window_summary(x, cos, sin, valid, summary_index(valid))
        return self.image_norm(summaries).view(images.shape[0], self.cfg.n_windows, self.cfg.dim)

    # ---- decoder ----

    def embed(self, tokens, summaries=None):
        """(B, T) tokens with IMAGE_SLOT marks + (N, W, C) summaries in order -> (B, T, C)."""
        x = self.tok_emb(tokens.clamp(min=0))
        if summaries is not None:
            x = x.masked_scatter((tokens == IMAGE_SLOT)[..., None], summaries.to(x.dtype))
        return x

    def decode(self, x, kv_cache=None, input_pos=None):
        """Decoder over embeddings x (B, T, C) -> (final hidden (B, T, C), new cache or None).

        ``input_pos`` (T,) are the positions of x in the sequence (default 0..T-1); with a cache, a list
        of per-layer (k, v) of shape (B, K, max_seq, D).
        """
        T = x.shape[1]
        if input_pos is None:
            input_pos = torch.arange(T, device=x.device)
        cos, sin = self.text_cos[input_pos], self.text_sin[input_pos]
        new_cache = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk.forward_causal(x, cos, sin, None if kv_cache is None else kv_cache[i], input_pos)
            new_cache.append(kv)
        return self.norm(x), (new_cache if kv_cache is not None else None)

    def logits(self, h):
        return self.head(h).float()

    def empty_cache(self, batch: int, dtype=None, device=None):
        dtype = dtype or self.head.weight.dtype
        shape = (batch, self.cfg.n_kv_heads, self.cfg.max_seq_len, self.cfg.head_dim)
        return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                for _ in self.blocks]

    def forward(self, tokens, images=None, sizes=None):
        """Training/scoring forward: logits (B, T, text_vocab + n_colors) for every position."""
        summaries = self.encode_images(images, sizes, prune=False) if images is not None else None
        h, _ = self.decode(self.embed(tokens, summaries))
        return self.logits(h)


def split_losses(logits, targets, text_vocab: int, word_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over all targets, and separately over pixel and word targets (sums + counts,
    so that losses average correctly across batches and processes).

    ``word_weight`` counts each word target as that many tokens in the mean. At 1 (the paper's loss)
    a captioned 32x32 image scores ~1024 pixel targets against ~2 word targets, so reading gets 0.2% of
    the gradient; a larger weight spends the same steps on the words without dropping pixel pretraining.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_t = targets.reshape(-1)
    per_tok = F.cross_entropy(flat_logits, flat_t.clamp(min=0), reduction="none")
    scored = flat_t != IGNORE
    pixel = scored & (flat_t >= text_vocab)
    word = scored & (flat_t < text_vocab)
    weight = pixel.float() + word_weight * word.float()
    n = weight.sum().clamp(min=1)
    return {
        "loss": (per_tok * weight).sum() / n,
        "pixel_sum": (per_tok * pixel).sum().detach(),
        "pixel_count": pixel.sum(),
        "word_sum": (per_tok * word).sum().detach(),
        "word_count": word.sum(),
    }
