"""NVIDIA's own ONNX parser and TensorRT builder (TensorRT for RTX, on this CPU, no GPU) judge every graph pixdeploy
makes for TensorRT, and pixdeploy's own tables (`trt_support`) are checked against that parser rule by rule.

The wheel is part of the test install (`pixdeploy[dev]`), so none of this is skipped where CI runs."""

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from pixdeploy.export.nvidia_check import check_bundle, check_files
from pixdeploy.export.trt_support import unsupported
from pixdeploy.runtime import Bundle

from pixdeploy.cli import main
from pixdeploy.errors import PixdeployError

TENSORRT_TARGETS = ("tensorrt-10.3", "tensorrt-10.15")  # as tests/conftest.py makes them
VARIANTS = {"fp32", "fp16", "int8-tensorrt"}


@pytest.fixture(scope="module")
def reports(tensorrt_bundles):
    return {t: check_bundle(tensorrt_bundles[t], echo=lambda *_: None) for t in TENSORRT_TARGETS}


@pytest.mark.parametrize("target", TENSORRT_TARGETS)
def test_every_tensorrt_graph_parses_and_builds_for_sm80_86_89(reports, tensorrt_bundles, target):
    """Every variant meant for TensorRT, both graphs, with the project's own profiles (prefill and decode in one
    decoder engine, batch 1..4) and its build settings (strongly typed, decomposable attention on 10.15)."""
    report = reports[target]
    assert report.compute_capabilities == ("8.0", "8.6", "8.9")
    assert {(v.variant, v.graph) for v in report.verdicts} == {(a, g) for a in VARIANTS
                                                               for g in ("image_encoder", "decoder")}
    for v in report.verdicts:
        assert v.accepted and v.engine_bytes > 100_000, v.line()
        # The custom ops' bodies no longer share node names (n0, n1, ... in each): every inlined node can be
        # inspected. (Each is called once in the tiny model's encoder.)
        assert not [w for w in v.warnings if "already exists" in w], (v.variant, v.graph)
    # Each variant is in the bundle, so it passed its precision's parity gate on onnxruntime.
    assert set(Bundle(tensorrt_bundles[target]).variants) == VARIANTS


def test_a_fp16_graph_with_softmax_precision_fails_with_nvidias_message(tensorrt_bundles, tmp_path):
    """What the fp16 variant of a 10.15 bundle was before: softmax_precision on every Attention."""
    from pixdeploy.export.quantize import FP32_ATTRIBUTES

    path = Bundle(tensorrt_bundles["tensorrt-10.15"]).graph_path("decoder", "fp16")
    proto = onnx.load(str(path))
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert attention and not any(a.name == "softmax_precision" for n in attention for a in n.attribute)
    for node in attention:
        node.attribute.append(helper.make_attribute(FP32_ATTRIBUTES["Attention"], T.FLOAT))
    onnx.save(proto, str(tmp_path / "decoder.onnx"))
    (verdict,) = check_files({"decoder": tmp_path / "decoder.onnx"}, echo=lambda *_: None).verdicts
    assert not verdict.parsed
    assert f"node {attention[0].name} (Attention): Setting softmax precision is not supported in TensorRT " \
           "Attention." in verdict.problems
    assert any("softmax_precision" in p for p in unsupported(proto, "10.15"))  # the table says the same


def test_the_onnxruntime_target_keeps_its_fp32_softmax_attribute():
    """onnxruntime takes softmax_precision; only TensorRT-bound graphs leave it out."""
    from pixdeploy.export.profiles import PROFILES
    from pixdeploy.export.quantize import mark_fp32_islands

    for profile, expect in ((PROFILES["onnxruntime"], True), (PROFILES["tensorrt-10.15"], False)):
        node = helper.make_node("Attention", ["q", "k", "v"], ["y"])
        proto = helper.make_model(helper.make_graph([node], "g", [], []))
        mark_fp32_islands(proto, profile)
        assert any(a.name == "softmax_precision" for a in proto.graph.node[0].attribute) == expect


# ---- pixdeploy's parser table, rule by rule, against NVIDIA's parser ----

def _model(nodes, inputs, out_type=T.FLOAT, opset=23, inits=(), domains=()):
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", out_type, None)], initializer=list(inits))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


def _const(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.array(value, dtype), name)


Q4 = [(n, T.FLOAT, [1, 2, 4, 8]) for n in "qkv"]
Q3 = [(n, T.FLOAT, [1, 4, 16]) for n in "qkv"]
X = [("x", T.FLOAT, [2, 8])]
U8 = [("x", T.UINT8, [2, 3])]
_attn = lambda ins, outs=("y",), **a: helper.make_node("Attention", list(ins), list(outs), **a)  # noqa: E731
NEWER = "TensorRT for RTX's parser is newer than TensorRT 10.15's; the table follows 10.15's documented "
# rule -> (probe refused by the rule, its twin that passes, NVIDIA refuses the probe?, why the two may differ)
PROBES = {
    "Attention: softmax_precision refused (checkAttention)": (
        _model([_attn("qkv", softmax_precision=1)], Q4), _model([_attn("qkv")], Q4), True, None),
    "Attention: softcap refused": (
        _model([_attn("qkv", softcap=30.0)], Q4), _model([_attn("qkv")], Q4), True, None),
    "Attention: no past_key/past_value inputs": (
        _model([_attn(["q", "k", "v", "", "pk", "pv"])], Q4 + [(n, T.FLOAT, [1, 2, 3, 8]) for n in ("pk", "pv")]),
        _model([_attn("qkv")], Q4), True, None),
    "Attention: one output only": (
        _model([_attn("qkv", ("y", "pk"))], Q4), _model([_attn("qkv")], Q4), True, None),
    "axes inputs must be build-time constants": (
        _model([helper.make_node("ReduceSum", ["x", "ax"], ["y"])], X + [("ax", T.INT64, [1])]),
        _model([helper.make_node("ReduceSum", ["x", "ax"], ["y"])], X, inits=[_const("ax", [1])]), True, None),
    "operators with no importer": (
        _model([helper.make_node("Col2Im", ["x", "s", "b"], ["y"])], [("x", T.FLOAT, [1, 4, 9])],
               inits=[_const("s", [4, 4]), _const("b", [2, 2])]),
        _model([helper.make_node("Relu", ["x"], ["y"])], X), True, None),
    "custom ops need a function body (or a plugin)": (
        _model([helper.make_node("Foo", ["x"], ["y"], domain="pixdeploy")], X, domains=["pixdeploy"]),
        _model([helper.make_node("Relu", ["x"], ["y"])], X), True, None),
    "Attention inputs 4-D": (
        _model([_attn("qkv", q_num_heads=2, kv_num_heads=2)], Q3), _model([_attn("qkv")], Q4), False,
        NEWER + "importer source (4-D only); pixdeploy's graphs make every Attention input 4-D, so either holds"),
    "UINT8 only as a network input read by a Cast to FLOAT/FLOAT16": (
        _model([helper.make_node("Cast", ["x"], ["y"], to=T.INT32)], U8, out_type=T.INT32),
        _model([helper.make_node("Cast", ["x"], ["y"], to=T.FLOAT)], U8), False,
        NEWER + "operators.md and NvInferRuntimeBase.h (kUINT8 converts to kFLOAT/kHALF only)"),
    "UINT8 is not read by Shape": (
        _model([helper.make_node("Shape", ["x"], ["y"])], U8, out_type=T.INT64),
        _model([helper.make_node("Shape", ["x"], ["y"])], [("x", T.FLOAT, [2, 3])], out_type=T.INT64), False,
        NEWER + "operators.md: Shape's Supported Types have no UINT8"),
    "Supported Types column (CumSum on INT64)": (
        _model([helper.make_node("CumSum", ["x", "a"], ["y"])], [("x", T.INT64, [2, 3])], out_type=T.INT64,
               inits=[_const("a", 1)]),
        _model([helper.make_node("CumSum", ["x", "a"], ["y"])], [("x", T.FLOAT, [2, 3])], inits=[_const("a", 1)]),
        False, NEWER + "operators.md column (FP32, FP16, BF16)"),
    "opsets 9..24": (
        _model([helper.make_node("Relu", ["x"], ["y"])], X, opset=25),
        _model([helper.make_node("Relu", ["x"], ["y"])], X, opset=24), False,
        NEWER + "operators.md heading (\"opset 9 to opset 24\")"),
}


@pytest.fixture(scope="module")
def probe_verdicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    files = {}
    for i, (probe, twin, _, _) in enumerate(PROBES.values()):
        for kind, model in (("probe", probe), ("twin", twin)):
            onnx.save(model, str(root / f"{i}-{kind}.onnx"))
            files[f"{i}-{kind}"] = root / f"{i}-{kind}.onnx"
    report = check_files(files, echo=lambda *_: None)
    return {v.graph: v for v in report.verdicts}


@pytest.mark.parametrize("rule", list(PROBES))
def test_each_table_rule_against_nvidias_parser(rule, probe_verdicts):
    """The table (10.15 rules) refuses every probe and accepts every twin; NVIDIA's parser refuses the probe
    where it enforces the same rule, and where it does not, the reason is written down. Both twins parse with
    NVIDIA's parser too, so a probe is refused for its rule, not for something else in it."""
    i = list(PROBES).index(rule)
    probe, twin, nvidia_refuses, reason = PROBES[rule]
    assert unsupported(probe, "10.15"), "the table accepts the probe"
    assert unsupported(twin, "10.15") == [], "the table refuses the twin"
    assert probe_verdicts[f"{i}-twin"].parsed, probe_verdicts[f"{i}-twin"].problems
    assert (not probe_verdicts[f"{i}-probe"].parsed) == nvidia_refuses, probe_verdicts[f"{i}-probe"].problems
    assert nvidia_refuses or reason, "a rule NVIDIA's parser does not enforce needs its reason"


def test_the_10_3_table_stays_stricter_than_nvidias_newer_parser(probe_verdicts):
    """Attention and opset 23 are refused for TensorRT 10.3 (no importer before 10.14) although TensorRT for RTX
    parses them: a clean parse with a newer parser is evidence for 10.3, not proof, so the 10.3 table decides."""
    probe, _, _, _ = PROBES["Attention: softmax_precision refused (checkAttention)"]
    twin = PROBES["Attention: softmax_precision refused (checkAttention)"][1]
    assert any("no importer in TensorRT 10.3" in p for p in unsupported(twin, "10.3"))
    assert probe_verdicts[f"{list(PROBES).index('Attention: softmax_precision refused (checkAttention)')}-twin"].parsed


# ---- the command a user runs ----

def test_build_engine_check_reports_each_graph(tensorrt_bundles, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tensorrt_bundles["tensorrt-10.15"], bundle)
    before = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*"))
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--check", "--variant", "fp16",
                                       "--compute-capability", "8.6", "--json", str(tmp_path / "verdict.json")])
    assert result.exit_code == 0, result.output
    assert "fp16           image_encoder  parsed, built" in result.output
    assert "fp16           decoder        parsed, built" in result.output
    assert "compute capability 8.6" in result.output and "no engine was written" in result.output
    report = json.loads((tmp_path / "verdict.json").read_text())
    assert [v["graph"] for v in report["verdicts"]] == ["image_encoder", "decoder"]
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")) == before  # nothing written inside


def test_build_engine_check_fails_naming_node_and_message(tensorrt_bundles, tmp_path):
    """A bundle whose graph NVIDIA's parser refuses: exit 1, the graph, the node and the parser's message."""
    from pixdeploy.runtime.bundle import file_entries

    bundle = tmp_path / "b"
    shutil.copytree(tensorrt_bundles["tensorrt-10.15"], bundle)
    path = Bundle(bundle).graph_path("image_encoder", "fp16")
    proto = onnx.load(str(path))
    for fn in proto.functions:
        for node in fn.node:
            if node.op_type == "Attention":
                node.attribute.append(helper.make_attribute("softmax_precision", T.FLOAT))
    onnx.save(proto, str(path))
    manifest = json.loads((bundle / "manifest.json").read_text())  # re-sealed, as a careless tool would
    manifest["files"].update(file_entries(bundle, path.parent))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--check", "--compute-capability", "8.9"])
    assert result.exit_code == 1, result.output
    assert "fp16           image_encoder  refused by the parser: node " in result.output
    assert "(Attention): Setting softmax precision is not supported in TensorRT Attention." in result.output
    assert "fp32           image_encoder  parsed, built" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: NVIDIA's parser or builder refused 1 of 6")


def test_check_refuses_what_is_not_for_tensorrt(tiny_bundle):
    with pytest.raises(PixdeployError, match="not meant for TensorRT"):
        check_bundle(tiny_bundle, echo=lambda *_: None)
    result = CliRunner().invoke(main, ["build-engine", str(tiny_bundle), "--check"])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "--target tensorrt-10.15" in result.output


def test_check_names_the_compute_capabilities_it_has(tensorrt_bundles):
    """Hopper (9.0) is not a TensorRT for RTX target: one line listing the ones it has."""
    result = CliRunner().invoke(main, ["build-engine", str(tensorrt_bundles["tensorrt-10.3"]), "--check",
                                       "--compute-capability", "9.0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "builds for compute capabilities" in result.output and "8.6" in result.output
    for bad in ("8", "sm86", "8.6.1", ""):
        result = CliRunner().invoke(main, ["build-engine", str(tensorrt_bundles["tensorrt-10.3"]), "--check",
                                           "--compute-capability", bad])
        assert result.exit_code != 0 and "MAJOR.MINOR" in result.output, bad


def test_build_engine_without_a_gpu_shows_nvidias_verdict_then_says_why_nothing_was_built(tensorrt_bundles):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: build-engine builds instead")
    bundle = tensorrt_bundles["tensorrt-10.3"]
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--variant", "int8-tensorrt"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0] == "no engine can be built here; NVIDIA's parser and builder on the CPU say:"
    assert "int8-tensorrt  decoder        parsed, built" in result.output
    assert lines[-1].startswith(f"error: no engine was built for {bundle}: TensorRT is not installed")
    assert not (bundle / "engines").exists()


def test_check_refuses_a_verdict_file_it_cannot_or_must_not_write_before_any_work(tensorrt_bundles, tmp_path):
    bundle = tensorrt_bundles["tensorrt-10.3"]
    (tmp_path / "d.json").mkdir()
    for target, message in ((bundle / "verdict.json", "lies inside"), (tmp_path / "d.json", "is a directory"),
                            (tmp_path / "no" / "v.json", "does not exist")):
        result = CliRunner().invoke(main, ["build-engine", str(bundle), "--check", "--json", str(target)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "NVIDIA's ONNX parser" not in result.output  # refused before the parse and build
    assert not (bundle / "verdict.json").exists()
