"""``pixdeploy::ColorFold(images float (N,S,S,3), sizes int64 (N,2)) -> ids int64 (N,S,S)``.

Folds each colour to ``r//f + (g//f)*L + (b//f)*L*L`` and letterbox padding to ``L**3``
(reference: `pixdeploy.folding.fold_torch`, twin of the runtime's `fold_np`). Attribute ``fold``.

``images`` holds the uint8 network input's values 0..255 as float32: the exporter gives the graph one
``Cast(images -> FLOAT)`` that every reader of the input shares (`profile_lowering.cast_uint8_inputs`), because
TensorRT takes a UINT8 tensor only as a network input feeding a cast to float, and a plugin claiming this node
receives what the node does.
"""

import torch
from onnxscript import FLOAT, INT64, script
from onnxscript import opset23 as op
from pixdeploy.export.ops import OPSET, VERSION

from pixdeploy.folding import fold_torch


@script(OPSET, default_opset=op)
def ColorFold(images: FLOAT, sizes: INT64, fold: int) -> INT64:
    f = op.Constant(value_int=fold)
    levels = op.Div(op.Constant(value_int=256), f)
    # Exact integers 0..255 cast to int64; int64 division of non-negatives: floor, as in PyTorch.
    c = op.Div(op.Cast(images, to=7), f)
    one = op.Constant(value_ints=[1])
    weights = op.Concat(one, op.Reshape(levels, one), op.Reshape(levels * levels, one), axis=0)
    ids = op.ReduceSum(c * weights, op.Constant(value_ints=[-1]), keepdims=0)
    side = op.Shape(images, start=1, end=2)
    idx = op.Range(op.Constant(value_int=0), op.Squeeze(side), op.Constant(value_int=1))
    h = op.Unsqueeze(op.Slice(sizes, op.Constant(value_ints=[0]), one, one), op.Constant(value_ints=[2]))
    w = op.Unsqueeze(op.Slice(sizes, one, op.Constant(value_ints=[2]), one), op.Constant(value_ints=[2]))
    rows = op.Less(op.Reshape(idx, op.Constant(value_ints=[1, -1, 1])), h)  # (N, S, 1)
    cols = op.Less(op.Reshape(idx, op.Constant(value_ints=[1, 1, -1])), w)  # (N, 1, S)
    pad = levels * levels * levels
    return op.Where(op.And(rows, cols), ids, pad)


def color_fold_export(images, sizes, fold: int):
    """Stands in for `fold_torch` during export: emits the custom node."""
    if not torch.onnx.is_in_onnx_export():
        return fold_torch(images, sizes, fold)
    return torch.onnx.ops.symbolic(
        "pixdeploy::ColorFold", (images, sizes), {"fold": fold},
        dtype=torch.int64, shape=images.shape[:3], version=VERSION,
    )
