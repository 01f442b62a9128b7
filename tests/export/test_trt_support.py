"""The TensorRT parser tables catch what each parser would reject."""

import pytest
from onnx import TensorProto, helper
from pixdeploy.export.trt_support import PARSERS, parser_table, unsupported

from pixdeploy.errors import PixdeployError


def model(nodes, inputs, opset=20, functions=()):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("pixdeploy", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=imports, functions=list(functions), ir_version=10)


def test_table_per_version():
    assert parser_table("10.3.0.30") is PARSERS["10.3"] and parser_table("10.14.1") is PARSERS["10.3"]
    assert parser_table("10.15.1.29") is PARSERS["10.15"] and parser_table("11.4.1") is PARSERS["10.15"]
    assert "Attention" not in PARSERS["10.3"].ops and "RMSNormalization" in PARSERS["10.15"].ops
    with pytest.raises(PixdeployError, match="older than any export target"):
        parser_table("8.6.2")


def test_fused_operators_and_opset_23_are_not_for_tensorrt_10_3():
    x = [("x", TensorProto.FLOAT, [2, 8]), ("w", TensorProto.FLOAT, [8])]
    m = model([helper.make_node("RMSNormalization", ["x", "w"], ["y"])], x, opset=23)
    problems = unsupported(m, "10.3.0.30")
    assert any("opset 23" in p for p in problems) and any("RMSNormalization" in p for p in problems)
    assert unsupported(m, "10.15.1") == []


def test_axes_computed_at_run_time_are_flagged():
    x = [("x", TensorProto.FLOAT, [2, 8]), ("axes", TensorProto.INT64, [1])]
    m = model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], x)
    assert any("axes" in p for p in unsupported(m, "10.3"))
    const = helper.make_node("Constant", [], ["c"], value_ints=[1])
    m = model([const, helper.make_node("ReduceSum", ["x", "c"], ["y"])], x[:1])
    assert unsupported(m, "10.3") == []


def test_custom_ops_are_checked_through_their_bodies():
    body = helper.make_function("pixdeploy", "Norm", ["a", "b"], ["o"],
                                [helper.make_node("RMSNormalization", ["a", "b"], ["o"])],
                                [helper.make_opsetid("", 23)])
    x = [("x", TensorProto.FLOAT, [2, 8]), ("w", TensorProto.FLOAT, [8])]
    m = model([helper.make_node("Norm", ["x", "w"], ["y"], domain="pixdeploy")], x, opset=23, functions=[body])
    assert any("RMSNormalization" in p for p in unsupported(m, "10.3"))
    bare = model([helper.make_node("Norm", ["x", "w"], ["y"], domain="pixdeploy")], x, opset=23)
    bare.opset_import.append(helper.make_opsetid("pixdeploy", 1))
    assert any("without a function body" in p for p in unsupported(bare, "10.15"))
