"""Rewrite exported graphs for an export profile (see `pixdeploy.export.profiles`).

One pass for every graph and every custom op's function body, so a new custom op written with the
fused opset-23 operators gets its elementary form for TensorRT 10.3 with no code of its own:

- ``fused=False``: each ``Attention`` becomes matmul -> masked softmax (fp32) -> matmul and each
  ``RMSNormalization`` becomes elementary ops with fp32 statistics; then the opset drops to the profile's.
- ``attention_4d``: ``Attention`` masks get leading unit dims (TensorRT's importer takes 4-D only) and become
  additive masks in the query's type (`_masks_for_tensorrt` says why).
- every profile: custom ``pixdeploy::`` nodes carry ``plugin_namespace="pixdeploy"``, so a TensorRT plugin
  registered under that namespace can claim them (10.7+); their function bodies stay for everyone else.
- every profile: a uint8 network input is read by one ``Cast`` to float and nothing else (`cast_uint8_inputs`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pixdeploy.export.ops import DOMAIN
from pixdeploy.export.profiles import ExportProfile

from pixdeploy.errors import PixdeployError

PLUGIN_NAMESPACE_ATTR = "plugin_namespace"
_FLOAT_LOWEST = float(np.finfo(np.float32).min)  # a masked score: exp() underflows to 0 without inf arithmetic


class _Emitter:
    """Appends nodes with unique names derived from the node being replaced."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.count = prefix, [], 0

    def __call__(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"{self.prefix}/{op}_{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{self.prefix}/{op}_{self.count}", **attrs))
        return out

    def const(self, value) -> str:
        arr = np.asarray(value)
        return self("Constant", value=numpy_helper.from_array(arr, f"{self.prefix}/c{self.count + 1}"))


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def lower_attention(node) -> list:
    """ONNX ``Attention`` (4-D Q/K/V, optional bool or float mask, grouped-query) in elementary ops.

    Grouped-query without copying K/V: the G query heads that share a KV head are contiguous, so Q
    reshaped to (B, K, G*L, E) multiplies K directly; scores go back to (B, H, L, S) for the mask.
    """
    a = _attrs(node)
    inputs = list(node.input) + [""] * (4 - len(node.input))
    q, k, v, mask = inputs[:4]
    if any(inputs[4:]) or any(node.output[1:]) or a.get("softcap", 0.0):
        raise PixdeployError(f"Attention {node.name}: KV-cache inputs, extra outputs and softcap cannot be "
                             "written out for this export target")
    e = _Emitter(node.name or node.output[0])
    q_shape, k_shape = e("Shape", q), e("Shape", k)
    dim = lambda shape, i: e("Slice", shape, e.const([i]), e.const([i + 1]))  # noqa: E731
    zero, rest = e.const([0]), e.const([-1])
    if "scale" in a:
        scale = e.const(np.float32(a["scale"]))
    else:  # the spec's default, 1/sqrt(head size)
        scale = e("Reciprocal", e("Sqrt", e("Cast", dim(q_shape, 3), to=TensorProto.FLOAT)))
    q_scaled = e("Mul", q, e("CastLike", scale, q))
    q_grouped = e("Reshape", q_scaled, e("Concat", zero, dim(k_shape, 1), rest, dim(q_shape, 3), axis=0))
    scores = e("MatMul", q_grouped, e("Transpose", k, perm=[0, 1, 3, 2]))  # (B, K, G*L, S)
    per_head = e("Concat", zero, dim(q_shape, 1), dim(q_shape, 2), rest, axis=0)
    scores = e("Cast", e("Reshape", scores, per_head), to=TensorProto.FLOAT)  # (B, H, L, S), fp32 softmax
    if mask:
        scores = _apply_mask(e, scores, mask)
    if a.get("is_causal", 0):
        length = lambda shape: e("Squeeze", dim(shape, 2))  # noqa: E731
        rows = e("Unsqueeze", e("Range", e.const(0), length(q_shape), e.const(1)), e.const([1]))
        cols = e("Unsqueeze", e("Range", e.const(0), length(k_shape), e.const(1)), e.const([0]))
        scores = e("Where", e("LessOrEqual", cols, rows), scores, e.const(np.float32(_FLOAT_LOWEST)))
    probs = e("CastLike", e("Softmax", scores, axis=-1), v)
    probs = e("Reshape", probs, e("Concat", zero, dim(k_shape, 1), rest, dim(k_shape, 2), axis=0))
    y = e("MatMul", probs, v)  # (B, K, G*L, Ev)
    e("Reshape", y, e("Concat", zero, dim(q_shape, 1), dim(q_shape, 2), rest, axis=0), out=node.output[0])
    return e.nodes


def _apply_mask(e: _Emitter, scores: str, mask: str) -> str:
    """Boolean masks only (True: attend), what pixdeploy's graphs use; a float mask is refused at graph
    level by `_lower_nodes`, and inside a function body it would fail the model check at export."""
    return e("Where", mask, scores, e.const(np.float32(_FLOAT_LOWEST)))


def lower_rms_norm(node) -> list:
    """ONNX ``RMSNormalization`` over the last axis: statistics in fp32, then cast back and scaled."""
    a = _attrs(node)
    if a.get("axis", -1) != -1 or a.get("stash_type", 1) != 1:
        raise PixdeployError(f"RMSNormalization {node.name}: only axis=-1 with fp32 statistics can be written out")
    x, weight = node.input[:2]
    e = _Emitter(node.name or node.output[0])
    xf = e("Cast", x, to=TensorProto.FLOAT)
    mean_sq = e("ReduceMean", e("Mul", xf, xf), e.const([-1]), keepdims=1)
    inv = e("Reciprocal", e("Sqrt", e("Add", mean_sq, e.const(np.float32(a.get("epsilon", 1e-5))))))
    e("Mul", e("CastLike", e("Mul", xf, inv), x), weight, out=node.output[0])
    return e.nodes


def _mask_types(proto) -> dict:
    """Element types of every tensor the shape inference can type (graph level only)."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    return {v.name: v.type.tensor_type.elem_type
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


def _lower_nodes(nodes, types: dict | None) -> list:
    out = []
    for node in nodes:
        if node.domain in ("", "ai.onnx") and node.op_type == "Attention":
            mask = node.input[3] if len(node.input) > 3 else ""
            if mask and types is not None and types.get(mask, TensorProto.BOOL) != TensorProto.BOOL:
                raise PixdeployError(f"Attention {node.name}: only boolean masks can be written out")
            out += lower_attention(node)
        elif node.domain in ("", "ai.onnx") and node.op_type == "RMSNormalization":
            out += lower_rms_norm(node)
        else:
            out.append(node)
    return out


def _replace(container, nodes) -> None:
    del container.node[:]
    container.node.extend(nodes)


def _set_opset(imports, version: int) -> None:
    for o in imports:
        if o.domain in ("", "ai.onnx"):
            o.version = version


def _masks_for_tensorrt(proto) -> None:
    """Every graph-level ``Attention`` mask made 4-D (TensorRT's importer takes 4-D only) and additive in the
    query's element type (0 where a key is attended, the type's lowest value where not).

    Why additive: with a boolean mask, TensorRT's builder (Myelin) refuses the fp16 decoder once the prefill
    profile is present ("Graph contains more than one op named ..._iota", seen with TensorRT for RTX 1.7 for every
    compute capability); the additive form builds for every variant and computes the same softmax."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    values = [*inferred.graph.value_info, *inferred.graph.input]
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    nodes, done = [], {}  # one mask often serves every layer: (mask, query type) -> the rewritten mask
    for node in proto.graph.node:
        mask = node.input[3] if node.op_type == "Attention" and len(node.input) > 3 else ""
        dtype = types.get(node.input[0]) if mask else None
        if mask and (mask, dtype) not in done:
            e, out = _Emitter(f"{mask}/for_tensorrt"), mask
            if ranks.get(mask, 4) < 4:
                out = e("Unsqueeze", out, e.const(np.arange(4 - ranks[mask], dtype=np.int64)))
            if types.get(mask) == TensorProto.BOOL and dtype:
                np_type = helper.tensor_dtype_to_np_dtype(dtype)
                out = e("Where", out, e.const(np.zeros((), np_type)), e.const(np.array(np.finfo(np_type).min)))
            nodes += e.nodes
            done[(mask, dtype)] = out
        if mask:
            node.input[3] = done[(mask, dtype)]
        nodes.append(node)
    _replace(proto.graph, nodes)


def mark_plugin_nodes(proto) -> None:
    """``plugin_namespace`` on every custom node, declared (unused) by its function so checkers accept it."""
    for node in proto.graph.node:
        if node.domain == DOMAIN and not any(a.name == PLUGIN_NAMESPACE_ATTR for a in node.attribute):
            node.attribute.append(helper.make_attribute(PLUGIN_NAMESPACE_ATTR, DOMAIN))
    for fn in proto.functions:
        if fn.domain == DOMAIN and PLUGIN_NAMESPACE_ATTR not in fn.attribute:
            fn.attribute.append(PLUGIN_NAMESPACE_ATTR)


def cast_uint8_inputs(proto) -> None:
    """Give each UINT8 network input one reader, ``Cast(x -> FLOAT)``, and move its other readers to that float
    copy: the ``Shape`` nodes the exporter takes dims from (a dim does not depend on the type) and custom nodes
    (their contract takes the float copy, see `pixdeploy.export.ops.color_fold`).

    TensorRT's ONNX parser: "UINT8 is only supported as network input or output tensor types" (onnx-tensorrt
    docs/operators.md, 10.1 and 10.15), and a kUINT8 tensor converts to kFLOAT or kHALF only (NvInferRuntimeBase.h,
    TensorRT release/10.3). The cast is exact (0..255). Runs again on its own output without change."""
    for value in proto.graph.input:
        if value.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        readers = [n for n in proto.graph.node if value.name in n.input]
        as_float = f"{value.name}_float"
        cast = next((n for n in readers if n.op_type == "Cast" and n.output[0] == as_float), None)
        for node in readers:
            if node is cast:
                continue
            if node.op_type != "Shape" and node.domain != DOMAIN:
                raise PixdeployError(f"{node.op_type} {node.name} reads the uint8 input {value.name}; only Shape and "
                                     "pixdeploy custom nodes may read its float copy")
            node.input[:] = [as_float if i == value.name else i for i in node.input]
        if cast is None:
            proto.graph.node.insert(0, helper.make_node("Cast", [value.name], [as_float], name=f"{value.name}/Cast",
                                                        to=TensorProto.FLOAT))


def apply_profile(proto, profile: ExportProfile) -> None:
    """Rewrite ``proto`` in place for ``profile`` (graph and function bodies)."""
    cast_uint8_inputs(proto)
    mark_plugin_nodes(proto)
    if not profile.fused:
        _replace(proto.graph, _lower_nodes(proto.graph.node, _mask_types(proto)))
        for fn in proto.functions:
            _replace(fn, _lower_nodes(fn.node, None))
            _set_opset(fn.opset_import, profile.opset)
        _set_opset(proto.opset_import, profile.opset)
    if profile.attention_4d:
        _masks_for_tensorrt(proto)
    proto.ir_version = profile.ir_version
