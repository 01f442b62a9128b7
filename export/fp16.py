"""The fp16 variant's graphs: exported from the half-precision PyTorch model, fp32 islands kept.

The reference model already keeps its numerically fragile parts in fp32 (RMSNorm statistics, RoPE tables and
rotation, the logits), so exporting it in half precision carries exactly those fp32 islands into the graph: they
are decided in one place, the model's code, rather than in an op block list that a graph converter
(onnxconverter-common, ModelOpt AutoCast) needs kept in step with the exporter's output; the custom ops keep
their names and bodies. Where the exporter fuses an island into one operator (RMSNorm, attention's softmax), the
fp32 precision is an attribute, set explicitly (`mark_fp32_islands`). Inputs, outputs and the KV cache stay fp32,
so every variant has the same signature.
"""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
from pixdeploy.export.onnx_export import graph_specs

# Fused operators whose fp32 island is an attribute: the exporter folds the reference model's
# `.float()` around the norm into RMSNormalization (fp16 in and out), whose statistics then follow
# `stash_type`; Attention's softmax follows `softmax_precision`. Both are set explicitly, not left to defaults,
# except where the target's TensorRT parser refuses the attribute itself (10.15+ refuses any softmax_precision
# on Attention; its fused kernels keep softmax statistics in fp32 anyway): `trt_support` holds which.
FP32_ATTRIBUTES = {"RMSNormalization": "stash_type", "LayerNormalization": "stash_type",
                   "Attention": "softmax_precision"}


def half_model(model):
    """A half-precision copy whose fp32 islands stay fp32: RoPE tables (buffers) and the output head."""
    import torch

    half = copy.deepcopy(model).half().eval()
    for name in ("image_cos", "image_sin", "text_cos", "text_sin"):
        setattr(half, name, getattr(model, name).float())
    half.head.float()  # logits over thousands of colours: fp32 keeps their ranking
    half.to(torch.device("cpu"))
    return half


def _fp16_wrappers():
    """Per graph, the module exported around the half model: fp32 in and out, so the signature is fp32's."""
    from torch import nn

    class Fp16Encoder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images, sizes):
            return self.model.encode_images(images, sizes).float()

    class Fp16Decoder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, embeds, input_pos, *past):
            cache = [(past[2 * i].half(), past[2 * i + 1].half()) for i in range(len(past) // 2)]
            h, cache = self.model.decode(embeds.half(), cache, input_pos)
            logits = self.model.head(h[:, -1].float())
            return (logits, *[t.float() for kv in cache for t in kv])

    return {"image_encoder": Fp16Encoder, "decoder": Fp16Decoder}


def mark_fp32_islands(proto: onnx.ModelProto, profile) -> None:
    """Norm statistics and softmax in fp32 on every fused node, in the graph and in function bodies, as far as
    ``profile``'s TensorRT parser accepts the attributes that say so."""
    from pixdeploy.export.trt_support import parser_table

    refused = parser_table(profile.tensorrt_min).refused_attributes if profile.tensorrt_min else {}
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    for node in nodes:
        attr = FP32_ATTRIBUTES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if attr and attr not in refused.get(node.op_type, {}):
            kept = [a for a in node.attribute if a.name != attr]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute(attr, onnx.TensorProto.FLOAT)])


def make_fp16(model, out: Path, profile) -> None:
    """Both graphs into ``out``. ``profile``: the export target of the bundle's fp32 graphs, whose operator set
    the fp16 graphs keep."""
    from pixdeploy.export.onnx_export import export_graph

    half = half_model(model)
    wrappers = _fp16_wrappers()
    for spec in graph_specs(model.cfg):
        path = out / f"{spec.name}.onnx"
        proto = export_graph(half, spec, path, profile, wrapper=wrappers[spec.name](half).eval())
        mark_fp32_islands(proto, profile)
        onnx.save(proto, str(path))
