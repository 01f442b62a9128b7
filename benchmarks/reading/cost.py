"""What each model costs: parameters, and image-encoder FLOPs per image.

FLOPs are counted by PyTorch's own `FlopCounterMode` on a real forward pass of one image (matmuls and
attention; norms, activations and embedding look-ups are not counted, the usual convention), with
attention run on the math backend so that its matmuls are seen. `encoder_flops_formula` says the same
thing in closed form; the tests hold the two to each other.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixdeploy.config import ModelConfig


def count_params(model: torch.nn.Module) -> dict:
    """Total parameters, and the part that belongs to the image encoder (everything the decoder lacks)."""
    decoder_side = ("tok_emb.", "blocks.", "norm.", "head.")
    encoder = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(decoder_side))
    return {"total": sum(p.numel() for p in model.parameters()), "image_encoder": encoder}


@torch.no_grad()
def encoder_flops(model: torch.nn.Module, cfg: ModelConfig) -> int:
    """FLOPs of ``model.encode_images`` on one full-size image (counted, not estimated).

    The pixel model is counted in its full form (every row through every image layer, as trained); the
    deployed, pruned form runs the last layer's query, MLP and norms for one row per window only."""
    S = cfg.image_size
    image = torch.randint(0, 256, (1, S, S, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[S, S]])
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model.encode_images(image, sizes, prune=False)
    return int(counter.get_total_flops())


def block_matmul_flops(cfg: ModelConfig, tokens: int) -> int:
    """Projections and SwiGLU MLP of one block over ``tokens`` tokens (2 FLOPs per multiply-add)."""
    qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    per_token = cfg.dim * qkv_out + cfg.n_heads * cfg.head_dim * cfg.dim + 3 * cfg.dim * cfg.mlp_hidden
    return 2 * tokens * per_token


def attention_flops(cfg: ModelConfig, groups: int, length: int) -> int:
    """Scores and weighted sum for ``groups`` independent sequences of ``length`` (the full square is
    computed, causal or not: that is what the kernels do)."""
    return groups * 2 * 2 * cfg.n_heads * length * length * cfg.head_dim


def encoder_flops_formula(cfg: ModelConfig, kind: str) -> int:
    """Closed form of `encoder_flops`: ``pixel`` (windows of pixels) or ``vit`` (one sequence of patches)."""
    if kind == "pixel":
        tokens = cfg.image_size**2
        layer = block_matmul_flops(cfg, tokens) + attention_flops(cfg, cfg.n_windows, cfg.window_tokens)
        return cfg.image_layers * layer
    if kind == "vit":
        patch_embed = 2 * cfg.n_windows * 3 * cfg.window_tokens * cfg.dim
        layer = block_matmul_flops(cfg, cfg.n_windows) + attention_flops(cfg, 1, cfg.n_windows)
        return patch_embed + cfg.image_layers * layer
    raise ValueError(f"unknown encoder kind {kind!r}")
