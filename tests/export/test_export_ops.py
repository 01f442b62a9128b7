"""Each custom op's ONNX function body against its PyTorch reference, run by onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from pixdeploy.export.ops import DOMAIN
from pixdeploy.export.ops.color_fold import ColorFold
from pixdeploy.export.ops.window_attention import WindowAttention

from pixdeploy.folding import fold_np
from pixdeploy.model import window_attention


def run_single_node(function, inputs: dict, attrs: dict, out_type, out_shape):
    node = helper.make_node(function.name, list(inputs), ["y"], domain=DOMAIN, **attrs)
    types = {np.uint8: TensorProto.UINT8, np.int64: TensorProto.INT64, np.float32: TensorProto.FLOAT,
             np.bool_: TensorProto.BOOL}
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(k, types[v.dtype.type], list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, list(out_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(DOMAIN, 1)],
                              functions=[function.to_function_proto()], ir_version=11)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


@pytest.mark.parametrize("fold", [4, 16, 64])
def test_color_fold_body_matches_reference_on_random_and_letterboxed(fold, photo):
    from pixdeploy.folding import prepare_image

    rng = np.random.default_rng(fold)
    rgb = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    real, real_size = prepare_image(photo, 16)  # a real letterboxed photo (wide: bottom padding)
    rgb[2] = real
    sizes = np.array([[16, 16], [16, 5], real_size], dtype=np.int64)
    # The node takes the uint8 input's float copy (the graph's one Cast of `images`).
    got = run_single_node(ColorFold, {"images": rgb.astype(np.float32), "sizes": sizes}, {"fold": fold},
                          TensorProto.INT64, rgb.shape[:3])
    np.testing.assert_array_equal(got, fold_np(rgb, sizes, fold))


def padded_windows(heads, kv_heads, seed):
    """Q/K/V for 5 windows of 16 pixels with every kind of padding a letterbox makes."""
    g = torch.Generator().manual_seed(seed)
    NW, P, D = 5, 16, 8
    q = torch.randn(NW, heads, P, D, generator=g)
    k = torch.randn(NW, kv_heads, P, D, generator=g)
    v = torch.randn(NW, kv_heads, P, D, generator=g)
    valid = torch.ones(NW, P, dtype=torch.bool)
    valid[1, 5:] = False  # bottom padding
    valid[2, torch.tensor([2, 3, 6, 7, 10, 11, 14, 15])] = False  # right padding inside the window
    valid[3] = False  # a window that is all padding
    return q, k, v, valid


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_window_attention_body_matches_reference(heads, kv_heads):
    q, k, v, valid = padded_windows(heads, kv_heads, heads + kv_heads)
    ref = window_attention(q, k, v, valid).numpy()
    got = run_single_node(WindowAttention, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(),
                                            "key_valid": valid.numpy()}, {}, TensorProto.FLOAT, q.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).all()
