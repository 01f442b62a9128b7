"""Analytic FLOP counts of the model's forward pass (a multiply-add is 2 FLOPs).

Attention counts the useful half of a causal score matrix (each query sees itself and the keys before
it), so "achieved TFLOP/s" does not credit work a kernel could skip. Embedding lookups count nothing.
"""

from __future__ import annotations

from pixdeploy.config import ModelConfig


def _linear_per_token(cfg: ModelConfig) -> float:
    qkv = 2 * cfg.dim * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    out = 2 * cfg.n_heads * cfg.head_dim * cfg.dim
    mlp = 2 * 3 * cfg.dim * cfg.mlp_hidden
    return qkv + out + mlp


def _attention_per_query(cfg: ModelConfig, keys: float) -> float:
    return 2 * 2 * cfg.n_heads * cfg.head_dim * keys  # scores and weighted sum


def image_block_flops(cfg: ModelConfig, n_images: int, pruned_last_layer: bool = False) -> float:
    """Every pixel through every image layer; a pixel sees (P + 1) / 2 keys on average. With
    ``pruned_last_layer`` the last layer projects keys and values for every pixel but runs its query,
    output projection and MLP for one pixel per window, which sees at most P keys (counted as P)."""
    tokens = n_images * cfg.image_size**2
    per_token = _linear_per_token(cfg) + _attention_per_query(cfg, (cfg.window_tokens + 1) / 2)
    if not pruned_last_layer:
        return tokens * cfg.image_layers * per_token
    windows = n_images * cfg.n_windows
    kv = 2 * cfg.dim * 2 * cfg.n_kv_heads * cfg.head_dim
    one_row = _linear_per_token(cfg) - kv + _attention_per_query(cfg, cfg.window_tokens)
    return tokens * (cfg.image_layers - 1) * per_token + tokens * kv + windows * one_row


def decoder_flops(cfg: ModelConfig, batch: int, new_tokens: int, context_before: int = 0,
                  all_logits: bool = False) -> float:
    """``new_tokens`` positions after ``context_before`` cached ones, per sequence; logits for the last
    position only unless ``all_logits`` (training)."""
    keys = context_before + (new_tokens + 1) / 2
    per_token = _linear_per_token(cfg) + _attention_per_query(cfg, keys)
    head = 2 * cfg.dim * cfg.vocab_out * (new_tokens if all_logits else 1)
    return batch * (new_tokens * cfg.n_layers * per_token + head)


def training_step_flops(cfg: ModelConfig, n_images: int, batch: int, seq_len: int) -> float:
    """Forward + backward (twice the forward) of one step."""
    forward = image_block_flops(cfg, n_images) + decoder_flops(cfg, batch, seq_len, all_logits=True)
    return 3 * forward
