"""``pixdeploy::WindowAttention(q (NW,H,P,D), k (NW,K,P,D), v (NW,K,P,D), key_valid bool (NW,P)) -> (NW,H,P,D)``.

Causal attention inside each pixel window that never attends to letterbox padding (a padding query may
see itself so no row is empty). Grouped-query: H is a multiple of K. The body is the opset-23 fused
``Attention`` operator, which TensorRT 10.14+ imports as its native ``IAttention``; for older TensorRT
(``export --target tensorrt-10.3``) the exporter writes it out in elementary ops (`profile_lowering`).
(reference: `pixdeploy.model.window_attention`)
"""

import torch
from onnxscript import BOOL, FLOAT, script
from onnxscript import opset23 as op
from pixdeploy.export.ops import OPSET, VERSION

from pixdeploy.model import window_attention


@script(OPSET, default_opset=op)
def WindowAttention(q: FLOAT, k: FLOAT, v: FLOAT, key_valid: BOOL) -> FLOAT:
    P = op.Squeeze(op.Shape(q, start=2, end=3))
    idx = op.Range(op.Constant(value_int=0), P, op.Constant(value_int=1))
    query = op.Unsqueeze(idx, op.Constant(value_ints=[1]))  # (P, 1)
    key = op.Unsqueeze(idx, op.Constant(value_ints=[0]))  # (1, P)
    causal = op.LessOrEqual(key, query)
    eye = op.Equal(key, query)
    keys = op.Unsqueeze(key_valid, op.Constant(value_ints=[1, 2]))  # (NW, 1, 1, P)
    mask = op.And(causal, op.Or(keys, eye))  # (NW, 1, P, P)
    return op.Attention(q, k, v, mask)


def window_attention_export(q, k, v, key_valid):
    """Stands in for `window_attention` during export: emits the custom node."""
    if not torch.onnx.is_in_onnx_export():
        return window_attention(q, k, v, key_valid)
    return torch.onnx.ops.symbolic(
        "pixdeploy::WindowAttention", (q, k, v, key_valid), {},
        dtype=q.dtype, shape=q.shape, version=VERSION,
    )
