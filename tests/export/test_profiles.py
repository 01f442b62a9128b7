"""Every export profile: valid graphs, within the parity thresholds on onnxruntime, within the operator
table of each TensorRT version it claims, custom nodes with bodies and plugin_namespace."""

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner
from pixdeploy.export.bundle import write_manifest
from pixdeploy.export.parity import check_parity, default_parity_images
from pixdeploy.export.profile_lowering import PLUGIN_NAMESPACE_ATTR, apply_profile
from pixdeploy.export.profiles import PROFILES, check_parsable, profile_for_tensorrt
from pixdeploy.export.trt_support import unsupported
from pixdeploy.runtime import Bundle, Pipeline

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.errors import PixdeployError

# TensorRT versions each profile claims to parse on, and ones whose parser must reject the bundle.
CLAIMS = {"tensorrt-10.3": (["10.3", "10.8", "10.14", "10.15", "11.1"], []),
          "tensorrt-10.15": (["10.15", "11.1"], ["10.3", "10.14"]),
          "onnxruntime": ([], ["10.3", "10.15"])}  # the decoder's 2-D attention mask: not for TensorRT's importer


@pytest.fixture(scope="module")
def profile_bundles(tiny_bundle, tmp_path_factory):
    """The tiny bundle's graphs rewritten for each profile (the exporter runs the same pass after export)."""
    out = {}
    for name, profile in PROFILES.items():
        path = tmp_path_factory.mktemp("profiles") / name
        shutil.copytree(tiny_bundle, path)
        for graph in ("image_encoder", "decoder"):
            proto = onnx.load(str(path / f"{graph}.onnx"))
            apply_profile(proto, profile)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(path / f"{graph}.onnx"))
        manifest = json.loads((path / "manifest.json").read_text())
        write_manifest(path, Bundle(path, verify=False).config,
                       {"source": manifest["source"], "parity": manifest["variants"]["fp32"]["parity"],
                        "export_profile": profile.to_dict()})
        out[name] = path
    return out


@pytest.fixture(scope="module")
def reference_model(tiny_checkpoint):
    return Checkpoint(tiny_checkpoint).load_model()


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_passes_the_parity_gate_on_onnxruntime(name, profile_bundles, reference_model):
    photos_and_a_digit = default_parity_images()[:3]  # wide photos (letterboxed) and handwriting
    result = check_parity(reference_model, Pipeline.load(profile_bundles[name], device="cpu"), photos_and_a_digit,
                          steps=8)
    assert result, result.table()
    assert result.stats["embeddings"]["max_abs"] < 1e-4


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_fits_the_tensorrt_versions_it_claims(name, profile_bundles):
    # That the graphs fit the versions a profile claims is NVIDIA's parser's and builder's to say
    # (tests/export/test_nvidia_check.py); here: the versions it does not claim are refused by the table.
    _, misfits = CLAIMS[name]
    protos = {g: onnx.load(str(profile_bundles[name] / f"{g}.onnx")) for g in ("image_encoder", "decoder")}
    for version in misfits:
        assert any(unsupported(p, version) for p in protos.values()), version
    for graph, proto in protos.items():
        assert all(o.version == PROFILES[name].opset for o in proto.opset_import if o.domain == "")
        custom = [n for n in proto.graph.node if n.domain == "pixdeploy"]
        assert custom or graph == "decoder"
        bodies = {f.name for f in proto.functions}
        for node in custom:
            assert node.op_type in bodies
            attrs = {a.name: a.s.decode() for a in node.attribute if a.name == PLUGIN_NAMESPACE_ATTR}
            assert attrs == {PLUGIN_NAMESPACE_ATTR: "pixdeploy"}


def test_tensorrt_10_3_graphs_have_no_fused_operators_anywhere(profile_bundles):
    proto = onnx.load(str(profile_bundles["tensorrt-10.3"] / "image_encoder.onnx"))
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert {"MatMul", "Softmax", "ReduceMean"} <= ops
    assert not ops & {"Attention", "RMSNormalization"}


def test_profile_for_each_tensorrt_and_refusals():
    assert profile_for_tensorrt("10.3.0.30").name == "tensorrt-10.3"
    assert profile_for_tensorrt("10.14.1").name == "tensorrt-10.3"
    assert profile_for_tensorrt("10.15.1.29").name == "tensorrt-10.15"
    assert profile_for_tensorrt("11.4.1").name == "tensorrt-10.15"
    check_parsable(PROFILES["tensorrt-10.3"], "11.1.0", "b")  # older graphs parse on newer parsers
    with pytest.raises(PixdeployError, match="--target tensorrt-10.3"):
        check_parsable(PROFILES["tensorrt-10.15"], "10.3.0.30", "b")
    with pytest.raises(PixdeployError, match="--target tensorrt-10.15"):
        check_parsable(PROFILES["onnxruntime"], "10.15.1", "b")
    with pytest.raises(PixdeployError, match="older than any export target"):
        check_parsable(PROFILES["tensorrt-10.3"], "8.6.2", "b")


def test_export_target_from_the_cli(tiny_checkpoint, tmp_path):
    """The whole path once: export --target tensorrt-10.3, parity-gated, recorded in the manifest."""
    from pixdeploy.cli import main

    out = tmp_path / "jetson"
    res = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "-o", str(out), "--target", "tensorrt-10.3"])
    assert res.exit_code == 0, res.output
    m = Bundle(out).manifest
    assert m["export_profile"]["name"] == "tensorrt-10.3" and m["onnx"]["opset"] == 20
    assert m["variants"]["fp32"]["parity"]["passed"]
    assert unsupported(onnx.load(str(out / "image_encoder.onnx")), "10.3") == []
    res = CliRunner().invoke(main, ["inspect", str(out)])
    assert "export target: tensorrt-10.3" in res.output
