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


# ---- element types: the "Supported Types" column and UINT8 ----

U8, I64, F32 = TensorProto.UINT8, TensorProto.INT64, TensorProto.FLOAT
IMAGES = [("images", U8, ["n", 8, 8, 3]), ("sizes", I64, ["n", 2])]


@pytest.mark.parametrize("version", ["10.3", "10.15"])
def test_shape_of_a_uint8_input_is_refused(version):
    m = model([helper.make_node("Shape", ["images"], ["s"], name="dims"),
               helper.make_node("Cast", ["s"], ["y"], to=F32)], IMAGES[:1])
    problems = unsupported(m, version)
    assert len(problems) == 1 and problems[0].startswith("Shape (dims): images is UINT8"), problems


@pytest.mark.parametrize("version", ["10.3", "10.15"])
def test_uint8_input_cast_to_float_only(version):
    cast = lambda to: model([helper.make_node("Cast", ["images"], ["f"], name="c", to=to),  # noqa: E731
                             helper.make_node("Cast", ["f"], ["y"], to=F32)], IMAGES[:1])
    assert unsupported(cast(F32), version) == []
    assert unsupported(cast(TensorProto.FLOAT16), version) == []
    assert any(p.startswith("Cast (c): images is UINT8") for p in unsupported(cast(I64), version))


def test_uint8_network_output_only_from_a_cast_of_float():
    x = [("x", F32, [2, 3])]
    out = lambda node: helper.make_model(  # noqa: E731
        helper.make_graph([node], "t", [helper.make_tensor_value_info(*x[0])],
                          [helper.make_tensor_value_info("y", U8, [2, 3])]),
        opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    assert unsupported(out(helper.make_node("Cast", ["x"], ["y"], to=U8)), "10.3") == []
    i64 = model([helper.make_node("Cast", ["x"], ["i"], to=I64), helper.make_node("Cast", ["i"], ["y"], to=F32)], x)
    i64.graph.output[0].type.tensor_type.elem_type = U8
    i64.graph.node[1].attribute[0].i = U8  # INT64 -> UINT8: not a conversion TensorRT has
    assert any("y is UINT8" in p for p in unsupported(i64, "10.3"))
    u8 = model([helper.make_node("Cast", ["x"], ["c"], to=U8), helper.make_node("Identity", ["c"], ["y"], name="id")],
               x)
    problems = unsupported(u8, "10.3")
    assert any(p.startswith("Cast (c): c is UINT8") for p in problems)  # an intermediate UINT8 tensor
    assert any(p.startswith("Identity (id): c is UINT8") for p in problems)


def test_cumsum_on_int64_is_refused():
    x = [("x", TensorProto.BOOL, [2, 64])]
    axis = helper.make_node("Constant", [], ["axis"], value_int=1)
    for dtype, fits in ((I64, False), (F32, True)):
        m = model([axis, helper.make_node("Cast", ["x"], ["n"], to=dtype),
                   helper.make_node("CumSum", ["n", "axis"], ["c"], name="pos"),
                   helper.make_node("Cast", ["c"], ["y"], to=F32)], x)
        for version in ("10.3", "10.15"):
            problems = unsupported(m, version)
            assert (problems == []) == fits, (dtype, version, problems)
            assert fits or problems[0].startswith("CumSum (pos): INT64 (n, c), but TensorRT"), problems


def test_clip_on_int64_is_an_importer_exception_for_10_3_only():
    x = [("x", I64, [2, 4])]
    lo = helper.make_node("Constant", [], ["lo"], value=helper.make_tensor("lo", I64, [], [0]))
    m = model([lo, helper.make_node("Clip", ["x", "lo"], ["c"], name="clamp"),
               helper.make_node("Cast", ["c"], ["y"], to=F32)], x)
    assert unsupported(m, "10.3") == []  # onnxOpImporters.cpp (10.1-GA) takes INT64 through elementwise max/min
    assert any(p.startswith("Clip (clamp): INT64") for p in unsupported(m, "10.15"))


def color_fold_body():
    """ColorFold's body as written before and after the fix (reduced to its image reads)."""
    nodes = [helper.make_node("Cast", ["images"], ["c"], to=I64),
             helper.make_node("Shape", ["images"], ["side"], start=1, end=2),
             helper.make_node("Squeeze", ["side"], ["s"]),
             helper.make_node("Range", ["zero", "s", "one"], ["idx"]),
             helper.make_node("ReduceSum", ["c", "last"], ["ids"], keepdims=0),
             helper.make_node("Unsqueeze", ["idx", "front"], ["idx2"]),
             helper.make_node("Add", ["ids", "idx2"], ["out"])]
    consts = [helper.make_node("Constant", [], [n], value=helper.make_tensor(n, I64, dims, v))
              for n, dims, v in (("zero", [], [0]), ("one", [], [1]), ("last", [1], [-1]), ("front", [1], [0]))]
    return helper.make_function("pixdeploy", "ColorFold", ["images", "sizes"], ["out"], consts + nodes,
                                [helper.make_opsetid("", 20)])


def encoder(old: bool):
    """The image encoder's reads of ``images`` and its pixel positions, in the old and in the fixed form."""
    pixels = "images" if old else "images_float"
    nodes = [] if old else [helper.make_node("Cast", ["images"], ["images_float"], name="images/Cast", to=F32)]
    nodes += [helper.make_node("Shape", [pixels], ["batch"], name="node_Shape_0", start=0, end=1),
              helper.make_node("ColorFold", [pixels, "sizes"], ["ids"], domain="pixdeploy", name="fold"),
              helper.make_node("Constant", [], ["axis"], value_int=1),
              helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
              helper.make_node("Reshape", ["ids", "minus1"], ["flat"]),
              helper.make_node("Cast", ["flat"], ["counted"], to=I64 if old else F32),
              helper.make_node("CumSum", ["counted", "axis"], ["cumsum"], name="node_cumsum"),
              helper.make_node("Cast", ["cumsum"], ["pos"], to=F32),
              helper.make_node("Cast", ["batch"], ["b"], to=F32),
              helper.make_node("Mul", ["pos", "b"], ["y"])]
    return model(nodes, IMAGES, functions=[color_fold_body()])


@pytest.mark.parametrize("version", ["10.3", "10.15"])
def test_the_old_encoder_form_is_refused_and_the_fixed_one_fits(version):
    problems = unsupported(encoder(old=True), version)
    assert any(p.startswith("Shape (node_Shape_0): images is UINT8") for p in problems), problems
    assert sum(p.startswith("Shape (") and "images is UINT8" in p for p in problems) == 2, problems  # + the body's
    assert any(p.startswith("Cast (") and "images is UINT8" in p for p in problems), problems  # UINT8 -> INT64
    assert any(p.startswith("CumSum (node_cumsum): INT64") for p in problems), problems
    assert unsupported(encoder(old=False), version) == []


def test_export_refuses_a_graph_that_does_not_fit_naming_node_op_and_type():
    from pixdeploy.export.bundle import check_fits_tensorrt
    from pixdeploy.export.profiles import PROFILES

    with pytest.raises(PixdeployError, match=r"CumSum \(node_cumsum\): INT64 \(counted, cumsum\)") as err:
        check_fits_tensorrt(encoder(old=True), "image_encoder", PROFILES["tensorrt-10.3"])
    assert "\n" not in str(err.value)
    check_fits_tensorrt(encoder(old=False), "image_encoder", PROFILES["tensorrt-10.3"])
