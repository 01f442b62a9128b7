"""The decoder in the form the fastest CPU runtimes use: onnxruntime's fused contrib operators.

The plain decoder (`pixdeploy.export.onnx_export`) is what TensorRT needs: standard operators, a fixed KV buffer
written by ScatterElements, rotary embedding and RMSNorm spelled out. On a CPU most of a decode step's time then
goes to the cache scatter and small elementwise and layout operators, not the weight matmuls. This module writes
the same decoder, weight for weight, as onnxruntime-genai's model builder shapes a LLaMA decoder for the CPU:

- ``com.microsoft.GroupQueryAttention`` with packed QKV, rotary embedding inside (the model's own cos/sin tables,
  halves rotated, as `pixdeploy.model.apply_rope`), and one KV buffer per layer that serves as past and present
  (bound to both, it is written in place: no scatter, no copy);
- ``com.microsoft.SkipSimplifiedLayerNormalization``: the residual add and the next RMSNorm in one node;
- the MLP's gate and up projections in one matmul; only the last position reaches the output head.

Its inputs and outputs are `pixdeploy.runtime.fused_decoder`'s contract (a variant records the form by name):
``embeds``, ``seqlens_k`` (B,) int32 = tokens in the cache after this step minus one, ``total_sequence_length`` ()
int32, ``past_key_<i>``/``past_value_<i>`` -> ``logits`` and ``present_key_<i>``/``present_value_<i>``. Positions are
0..T-1 at the first step and continue from the cache, which is how every prompt the runtime builds is laid out.

Weight-only quantization (``MatMulNBits``, int8 or int4 blocks, ``accuracy_level=4``: int8 compute on the
activations) is `quantize_weights`: once the scatter and the small operators are gone, the weight matmuls are
what remains, so the two gains multiply.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pixdeploy.runtime.fused_decoder import fused_signature

MS = "com.microsoft"
OPSET, IR_VERSION = 23, 11  # the onnxruntime target's: RMSNormalization for the first norm


def unsupported(cfg) -> str | None:
    """Why this config's decoder cannot take the fused form (None: it can). onnxruntime's CPU GroupQueryAttention
    refuses other head sizes ("head_size shall be a multiple of 16", onnxruntime 1.32)."""
    if cfg.head_dim % 16:
        return f"head size {cfg.head_dim} is not a multiple of 16, which onnxruntime's GroupQueryAttention needs"
    return None


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def weight(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list, outputs: int | list = 1, domain: str = "", name: str = "", **attrs):
        self.count += 1
        name = name or f"{op}_{self.count}"
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs


def build(model) -> onnx.ModelProto:
    """The fused fp32 decoder of a `pixdeploy.model.PixTokenLM` (weights copied from its state)."""
    import torch

    cfg = model.cfg
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    with torch.no_grad():
        cos, sin = model.text_cos.float().numpy(), model.text_sin.float().numpy()
    g = _Graph()
    cos_cache, sin_cache = g.weight("cos_cache", cos), g.weight("sin_cache", sin)
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x, residual = "embeds", None
    h = g.node("RMSNormalization", [x, g.weight("blocks.0.attn_norm.weight", sd["blocks.0.attn_norm.weight"])],
               name="layers.0/attn_norm", axis=-1, epsilon=cfg.norm_eps, stash_type=1)
    residual = x
    for i in range(cfg.n_layers):
        p = f"blocks.{i}"
        qkv_w = np.concatenate([sd[f"{p}.attn.wq.weight"], sd[f"{p}.attn.wk.weight"], sd[f"{p}.attn.wv.weight"]]).T
        qkv = g.node("MatMul", [h, g.weight(f"{p}.attn.qkv.weight", qkv_w)], name=f"layers.{i}/qkv_proj")
        attn = g.node("GroupQueryAttention",
                      [qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length",
                       cos_cache, sin_cache],
                      [f"layers.{i}/attn_out", f"present_key_{i}", f"present_value_{i}"], domain=MS,
                      name=f"layers.{i}/attn", num_heads=H, kv_num_heads=K, do_rotary=1, rotary_interleaved=0,
                      scale=float(D) ** -0.5)[0]
        o = g.node("MatMul", [attn, g.weight(f"{p}.attn.wo.weight", sd[f"{p}.attn.wo.weight"].T)],
                   name=f"layers.{i}/o_proj")
        h, _, _, residual = g.node("SkipSimplifiedLayerNormalization",
                                   [o, residual, g.weight(f"{p}.mlp_norm.weight", sd[f"{p}.mlp_norm.weight"])],
                                   4, domain=MS, name=f"layers.{i}/mlp_norm", epsilon=cfg.norm_eps)
        gate_up_w = np.concatenate([sd[f"{p}.mlp.w1.weight"], sd[f"{p}.mlp.w3.weight"]]).T
        gate_up = g.node("MatMul", [h, g.weight(f"{p}.mlp.gate_up.weight", gate_up_w)], name=f"layers.{i}/gate_up")
        gate, up = g.node("Split", [gate_up, g.const(f"layers.{i}/split", np.array([cfg.mlp_hidden] * 2))], 2,
                          name=f"layers.{i}/split", axis=-1)
        act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate], name=f"layers.{i}/sigmoid")],
                                    name=f"layers.{i}/silu"), up], name=f"layers.{i}/gated")
        down = g.node("MatMul", [act, g.weight(f"{p}.mlp.w2.weight", sd[f"{p}.mlp.w2.weight"].T)],
                      name=f"layers.{i}/down_proj")
        norm_w, norm_name = ((f"blocks.{i + 1}.attn_norm.weight", f"layers.{i + 1}/attn_norm")
                             if i + 1 < cfg.n_layers else ("norm.weight", "final_norm"))
        h, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [down, residual, g.weight(norm_w, sd[norm_w])],
                                   4, domain=MS, name=norm_name, epsilon=cfg.norm_eps)
    last = g.node("Slice", [h, g.const("last/start", np.array([-1])), g.const("last/end", np.array([2**62])),
                            g.const("last/axis", np.array([1]))], name="last_position")
    logits = g.node("MatMul", [last, g.weight("head.weight", sd["head.weight"].T)], name="head")
    g.node("Squeeze", [logits, g.const("squeeze/axis", np.array([1]))], ["logits"], name="logits")
    types = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32}
    signature = fused_signature(cfg)  # the runtime's contract, one owner
    inputs, outputs = ([helper.make_tensor_value_info(n, types[t], s) for n, (t, s) in signature[io].items()]
                       for io in ("inputs", "outputs"))
    graph = helper.make_graph(g.nodes, "pixdeploy_fused_decoder", inputs, outputs, g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="pixdeploy")
    proto.ir_version = IR_VERSION
    return proto


def quantize_weights(proto: onnx.ModelProto, bits: int, block_size: int = 32, symmetric: bool = True):
    """Every weight matmul (head included) as ``MatMulNBits`` with ``bits``-bit blocks, ``accuracy_level=4``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    source = onnx.ModelProto()
    source.CopyFrom(proto)  # the quantizer rewrites the model it is given
    q = MatMulNBitsQuantizer(source, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=4)
    q.process()
    out = q.model.model
    out.ir_version = proto.ir_version
    return out
