"""`pixdeploy::WindowSummaryAttention`: its ONNX function body and its PyTorch reference against the row of
the full window attention it stands for."""

import numpy as np
import pytest
import torch
from onnx import TensorProto
from pixdeploy.export.ops.window_summary_attention import WindowSummaryAttention
from test_export_ops import padded_windows, run_single_node

from pixdeploy.model import summary_index, window_attention, window_summary_attention


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_reference_is_the_summary_row_of_full_window_attention(heads, kv_heads):
    q, k, v, valid = padded_windows(heads, kv_heads, 1)
    last = summary_index(valid)
    assert last.tolist() == [15, 4, 13, 15, 15]
    rows = torch.arange(len(last))
    full = window_attention(q, k, v, valid)[rows, :, last]  # (NW, H, D)
    one = window_summary_attention(q[rows, :, last][:, :, None], k, v, valid, last)[:, :, 0]
    torch.testing.assert_close(one, full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_body_matches_reference(heads, kv_heads):
    q, k, v, valid = padded_windows(heads, kv_heads, 2)
    q1 = q[:, :, :1]
    pos = torch.tensor([15, 4, 13, 15, 0])  # any query position, not only the last valid one
    ref = window_summary_attention(q1, k, v, valid, pos).numpy()
    got = run_single_node(WindowSummaryAttention, {"q": q1.numpy(), "k": k.numpy(), "v": v.numpy(),
                                                   "key_valid": valid.numpy(), "query_pos": pos.numpy()},
                          {}, TensorProto.FLOAT, q1.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).all()
