"""Running a decoder written with onnxruntime's fused operators (`pixdeploy.export.fused_decoder`) behind the
plain decoder's contract, so `Pipeline`, `bench` and the parity gate drive it unchanged.

The fused graph takes ``embeds``, ``seqlens_k`` (B,) int32 and ``total_sequence_length`` () int32 instead of
``input_pos``, and one KV buffer per cache tensor that is both its past input and its present output: bound to
both through I/O binding, onnxruntime's GroupQueryAttention writes the step's keys and values into it in place.
`pixdeploy.runtime.backends.FusedDecoderRunner` presents the plain names (``input_pos``, the bundle's cache pairs)
and keeps each buffer as an `OrtValue` that the caller hands back as the next step's past, as the GPU runner does
with its device values. This module holds the contract (names, signature, the check of a graph against it).
"""

from __future__ import annotations

import numpy as np
from pixdeploy.runtime.bundle import DECODER_FORMS

from pixdeploy.errors import PixdeployError

FORM = DECODER_FORMS[0]  # the name a bundle variant records for this decoder form


def fused_cache_names(n_layers: int) -> list[tuple[str, str]]:
    """(past, present) input/output names of the fused graph, layer by layer, keys before values: the order of
    the plain decoder's cache pairs."""
    return [(f"past_{kv}_{i}", f"present_{kv}_{i}") for i in range(n_layers) for kv in ("key", "value")]


def fused_signature(cfg) -> dict:
    """The fused graph's inputs and outputs: name -> (dtype name, shape), a str dim free."""
    cache = ("float32", ["batch", cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim])
    inputs = {"embeds": ("float32", ["batch", "tokens", cfg.dim]), "seqlens_k": ("int32", ["batch"]),
              "total_sequence_length": ("int32", [])}
    outputs = {"logits": ("float32", ["batch", cfg.vocab_out])}
    for past, present in fused_cache_names(cfg.n_layers):
        inputs[past], outputs[present] = cache, cache
    return {"inputs": inputs, "outputs": outputs}


def check_fused(got_in: dict, got_out: dict, cfg, path) -> None:
    """A graph's inputs and outputs (name -> (numpy type or None, shape)) must be the fused decoder's for this
    config (names, dtypes, fixed dims)."""
    want = fused_signature(cfg)
    problems = []
    for got, declared in ((got_in, want["inputs"]), (got_out, want["outputs"])):
        if set(got) != set(declared):
            problems.append(f"has {sorted(got)} where {sorted(declared)} were expected")
            continue
        for name, (dtype, shape) in declared.items():
            g_dtype, g_shape = got[name]
            fixed = [(a, b) for a, b in zip(g_shape, shape) if isinstance(a, int) and isinstance(b, int)]
            if g_dtype is None or np.dtype(g_dtype) != np.dtype(dtype) or len(g_shape) != len(shape) \
                    or any(a != b for a, b in fixed):
                problems.append(f"{name} is {g_dtype}{g_shape}")
    if problems:
        raise PixdeployError(f"{path} is not the fused decoder of this bundle's config: {'; '.join(problems)}")
