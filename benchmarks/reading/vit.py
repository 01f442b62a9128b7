"""A patch-ViT image encoder in front of the project's decoder: the baseline the pixel model is read against.

Everything but the image encoder is `PixTokenLM`'s own (word embeddings, decoder blocks, unified head,
generation). The encoder cuts the image into ``window x window`` patches — so the decoder gets exactly
as many image tokens as from the pixel model's windows — embeds each patch linearly from its raw 8-bit
RGB (as ViTs do, no colour folding), adds a learned position per patch, and runs ``image_layers`` of the
same pre-norm blocks with full (bidirectional) attention over the patches. Not part of the deployed model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixdeploy.config import ModelConfig
from pixdeploy.folding import valid_mask_torch
from pixdeploy.model import Block, PixTokenLM, partition_windows


def full_attention_block(blk: Block, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """One `Block` with full attention over (N, W, C) patch tokens, padding patches never attended to.
    Positions come from the learned table, so RoPE is not applied."""
    h = blk.attn_norm(x)
    N, W, _ = h.shape
    q = blk.attn.wq(h).view(N, W, blk.attn.n_heads, blk.attn.head_dim).transpose(1, 2)
    k = blk.attn.wk(h).view(N, W, blk.attn.n_kv_heads, blk.attn.head_dim).transpose(1, 2)
    v = blk.attn.wv(h).view(N, W, blk.attn.n_kv_heads, blk.attn.head_dim).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :], enable_gqa=True)
    x = x + blk.attn.out(y)
    return x + blk.mlp(blk.mlp_norm(x))


class PatchViTLM(PixTokenLM):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        del self.pix_emb  # the colour-token table is the pixel encoder's; patches are embedded linearly
        self.patch_emb = nn.Linear(3 * cfg.window_tokens, cfg.dim)
        self.patch_pos = nn.Parameter(torch.zeros(cfg.n_windows, cfg.dim))
        nn.init.normal_(self.patch_emb.weight, std=0.02)
        nn.init.zeros_(self.patch_emb.bias)
        nn.init.normal_(self.patch_pos, std=0.02)

    def encode_images(self, images, sizes, prune: bool = True):
        """(N, S, S, 3) uint8 + (N, 2) sizes -> (N, W, C) patch tokens, in the windows' raster order.

        ``prune`` is accepted for the pixel model's interface; every patch token leaves this encoder."""
        N = images.shape[0]
        valid = valid_mask_torch(sizes, self.cfg.image_size)  # (N, S, S)
        rgb = (images.float() / 127.5 - 1.0) * valid[..., None]  # letterbox padding is 0, as in the pixel model
        patches = partition_windows(rgb, self.cfg.window).reshape(N, self.cfg.n_windows, -1)  # (N, W, P*3)
        key_valid = partition_windows(valid, self.cfg.window).view(N, self.cfg.n_windows, -1).any(-1)
        key_valid[:, 0] = True  # an image of zero size still attends somewhere
        x = self.patch_emb(patches.to(self.patch_emb.weight.dtype)) + self.patch_pos
        for blk in self.image_blocks:
            x = full_attention_block(blk, x, key_valid)
        return self.image_norm(x)

