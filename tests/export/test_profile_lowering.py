"""The elementary forms of Attention and RMSNormalization (export target tensorrt-10.3) against onnxruntime's
own fused operators, on random inputs: the rewrite must not change what a graph computes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from pixdeploy.export.profile_lowering import apply_profile
from pixdeploy.export.profiles import PROFILES
from pixdeploy.export.trt_support import unsupported

FLOAT, BOOL = TensorProto.FLOAT, TensorProto.BOOL


def one_node_model(node, inputs: dict, out_shape):
    types = {np.float32: FLOAT, np.bool_: BOOL}
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info(k, types[v.dtype.type], list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", FLOAT, list(out_shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)


def run(model, feed):
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def fused_and_lowered(model, feed):
    ref = run(model, feed)
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    apply_profile(lowered, PROFILES["tensorrt-10.3"])
    assert {n.op_type for n in lowered.graph.node}.isdisjoint({"Attention", "RMSNormalization"})
    assert lowered.opset_import[0].version == 20
    assert unsupported(lowered, "10.3") == []
    return ref, run(lowered, feed)


@pytest.mark.parametrize("heads, kv_heads, mask_rank, causal, scale", [
    (4, 2, 4, 0, None),  # grouped-query, per-window mask (WindowAttention's form)
    (4, 2, 2, 0, None),  # the decoder's (T, S) cache mask
    (4, 4, 0, 1, None),  # no mask, is_causal
    (6, 2, 2, 1, 0.3),  # mask and causal together, explicit scale
])
def test_lowered_attention_matches_fused(heads, kv_heads, mask_rank, causal, scale):
    rng = np.random.default_rng(heads * 10 + mask_rank)
    B, L, S, D = 3, 5, 7, 8
    feed = {"q": rng.standard_normal((B, heads, L, D), dtype=np.float32),
            "k": rng.standard_normal((B, kv_heads, S, D), dtype=np.float32),
            "v": rng.standard_normal((B, kv_heads, S, D), dtype=np.float32)}
    if mask_rank:
        mask = rng.random((B, 1, L, S) if mask_rank == 4 else (L, S)) < 0.6
        mask[..., 0] = True  # no empty rows (their softmax is undefined in both forms)
        feed["mask"] = mask
    attrs = {"is_causal": causal, **({"scale": scale} if scale is not None else {})}
    node = helper.make_node("Attention", list(feed), ["y"], name="att", **attrs)
    ref, got = fused_and_lowered(one_node_model(node, feed, (B, heads, L, D)), feed)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_lowered_rms_norm_matches_fused():
    rng = np.random.default_rng(1)
    feed = {"x": (rng.standard_normal((2, 3, 16)) * 50).astype(np.float32),
            "w": rng.standard_normal(16).astype(np.float32)}
    node = helper.make_node("RMSNormalization", ["x", "w"], ["y"], name="norm", axis=-1, epsilon=1e-5)
    ref, got = fused_and_lowered(one_node_model(node, feed, (2, 3, 16)), feed)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_kv_cache_attention_is_refused_not_silently_dropped():
    from pixdeploy.errors import PixdeployError

    feed = {n: np.zeros((1, 2, 3, 4), np.float32) for n in ("q", "k", "v")}
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_k", "past_v"], ["y"], name="att")
    model = one_node_model(node, feed, (1, 2, 3, 4))
    with pytest.raises(PixdeployError, match="KV-cache"):
        apply_profile(model, PROFILES["tensorrt-10.3"])


def test_uint8_inputs_get_one_cast_and_their_readers_its_float_copy():
    """Every profile: the uint8 input is read by one Cast to FLOAT; Shape and custom nodes move to its output;
    a second pass changes nothing; any other reader is refused."""
    from pixdeploy.export.profile_lowering import cast_uint8_inputs

    from pixdeploy.errors import PixdeployError

    def graph(*readers):
        g = helper.make_graph(list(readers), "t", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3])],
                              [helper.make_tensor_value_info(r.output[0], TensorProto.INT64, None) for r in readers])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)

    m = graph(helper.make_node("Shape", ["images"], ["s"]), helper.make_node("Fold", ["images"], ["f"],
                                                                             domain="pixdeploy"))
    cast_uint8_inputs(m)
    once = m.SerializeToString()
    cast_uint8_inputs(m)
    assert m.SerializeToString() == once
    readers = {n.op_type: list(n.input) for n in m.graph.node}
    assert readers == {"Cast": ["images"], "Shape": ["images_float"], "Fold": ["images_float"]}
    assert m.graph.node[0].op_type == "Cast" and m.graph.node[0].attribute[0].i == TensorProto.FLOAT
    with pytest.raises(PixdeployError, match="Add plus reads the uint8 input images"):
        cast_uint8_inputs(graph(helper.make_node("Add", ["images", "images"], ["a"], name="plus")))
