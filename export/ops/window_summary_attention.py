"""``pixdeploy::WindowSummaryAttention(q (NW,H,1,D), k (NW,K,P,D), v (NW,K,P,D), key_valid bool (NW,P),
query_pos int64 (NW,)) -> (NW,H,1,D)``.

One query per window: the row ``query_pos`` of `pixdeploy::WindowAttention` (causal inside the window,
never attending to letterbox padding, the query may see itself). The pruned last image layer asks it for
each window's summary pixel only. Grouped-query: H is a multiple of K. The body is the opset-23 fused
``Attention`` operator, as in WindowAttention's.
(reference: `pixdeploy.model.window_summary_attention`)
"""

import torch
from onnxscript import BOOL, FLOAT, INT64, script
from onnxscript import opset23 as op
from pixdeploy.export.ops import OPSET, VERSION

from pixdeploy.model import window_summary_attention


@script(OPSET, default_opset=op)
def WindowSummaryAttention(q: FLOAT, k: FLOAT, v: FLOAT, key_valid: BOOL, query_pos: INT64) -> FLOAT:
    P = op.Squeeze(op.Shape(k, start=2, end=3))
    key = op.Unsqueeze(op.Range(op.Constant(value_int=0), P, op.Constant(value_int=1)), op.Constant(value_ints=[0]))
    query = op.Unsqueeze(query_pos, op.Constant(value_ints=[1]))  # (NW, 1)
    causal = op.LessOrEqual(key, query)  # (NW, P)
    mask = op.And(causal, op.Or(key_valid, op.Equal(key, query)))
    return op.Attention(q, k, v, op.Unsqueeze(mask, op.Constant(value_ints=[1, 2])))  # mask (NW, 1, 1, P)


def window_summary_attention_export(q, k, v, key_valid, query_pos):
    """Stands in for `window_summary_attention` during export: emits the custom node."""
    if not torch.onnx.is_in_onnx_export():
        return window_summary_attention(q, k, v, key_valid, query_pos)
    return torch.onnx.ops.symbolic(
        "pixdeploy::WindowSummaryAttention", (q, k, v, key_valid, query_pos), {},
        dtype=q.dtype, shape=q.shape, version=VERSION,
    )
