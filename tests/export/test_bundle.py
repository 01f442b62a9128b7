import json
import shutil

import numpy as np
import onnx
import pytest
from pixdeploy.export import parity as parity_module
from pixdeploy.export.bundle import export_bundle
from pixdeploy.runtime import Bundle, BundleError, Pipeline

from pixdeploy.errors import PixdeployError


def test_bundle_contents_and_custom_ops(tiny_bundle):
    names = sorted(p.name for p in tiny_bundle.iterdir())
    assert names == ["decoder.onnx", "image_encoder.onnx", "manifest.json", "parity.json",
                     "text_embeddings.npy", "tokenizer.json"]
    enc = onnx.load(str(tiny_bundle / "image_encoder.onnx"))
    onnx.checker.check_model(enc, full_check=True)
    ops = [f"{n.domain}::{n.op_type}" for n in enc.graph.node]
    assert ops.count("pixdeploy::ColorFold") == 1 and ops.count("pixdeploy::WindowAttention") == 1
    assert ops.count("pixdeploy::WindowSummaryAttention") == 1  # the pruned last image layer
    assert {f.name for f in enc.functions} == {"ColorFold", "WindowAttention", "WindowSummaryAttention"}
    assert enc.ir_version == 11 and {o.domain: o.version for o in enc.opset_import}[""] == 23
    dec = onnx.load(str(tiny_bundle / "decoder.onnx"))
    onnx.checker.check_model(dec, full_check=True)
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["variants"]["fp32"]["parity"]["passed"]
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert manifest["graphs"]["image_encoder"]["inputs"]["images"]["shape"] == ["images", 32, 32, 3]


def test_parity_json_records_every_stage(tiny_bundle):
    p = json.loads((tiny_bundle / "parity.json").read_text())
    assert p["passed"] and p["decode_steps"] == 32 and p["images"] == 8
    checks = {c["name"]: c for c in p["checks"]}
    assert set(checks) == {"embed_max_abs", "embed_cosine_min", "logits_max_abs", "greedy_match"}
    assert checks["embed_max_abs"]["value"] < 1e-4 and checks["greedy_match"]["value"] == 1.0


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "decoder.onnx").write_bytes((b / "decoder.onnx").read_bytes()[:1000]), "checksum"),
    (lambda b: (b / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda b: (b / "manifest.json").write_text("{"), "manifest.json unreadable"),
    (lambda b: (b / "manifest.json").unlink(), "manifest.json missing"),
])
def test_damaged_bundles_are_refused(bundle_copy, damage, message):
    damage(bundle_copy)
    with pytest.raises(BundleError, match=message):  # a variant's graphs are hashed when it is first used
        Bundle(bundle_copy).graph_path("decoder")


def test_unknown_format_version_is_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    (bundle_copy / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        Bundle(bundle_copy)


def test_truncated_onnx_with_matching_checksum_is_one_error(bundle_copy):
    """Even a manifest rewritten to match a broken graph cannot make it load."""
    from pixdeploy.export.bundle import write_manifest

    path = bundle_copy / "image_encoder.onnx"
    path.write_bytes(path.read_bytes()[:5000])
    m = json.loads((bundle_copy / "manifest.json").read_text())
    write_manifest(bundle_copy, Bundle(bundle_copy, verify=False).config, {})
    with pytest.raises(PixdeployError, match="cannot load"):
        Pipeline.load(bundle_copy)
    assert m["format"] == "pixdeploy-bundle"


def test_existing_bundle_needs_force(tiny_checkpoint, tiny_bundle):
    with pytest.raises(PixdeployError, match="already exists"):
        export_bundle(tiny_checkpoint, tiny_bundle, echo=lambda *_: None)


def test_failed_parity_writes_no_bundle(tiny_checkpoint, tmp_path, monkeypatch):
    strict = {"fp32": {**parity_module.THRESHOLDS["fp32"], "embed_max_abs": 0.0}}
    monkeypatch.setattr(parity_module, "THRESHOLDS", strict)
    out = tmp_path / "b"
    with pytest.raises(parity_module.ParityError, match="embed_max_abs"):
        export_bundle(tiny_checkpoint, out, echo=lambda *_: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.tmp")]
    report = json.loads((tmp_path / "b.parity-failed.json").read_text())
    assert not report["passed"]


def test_parity_result_is_truthy_only_on_pass():
    r = parity_module.ParityResult("fp32", 1, 1, [parity_module.Check("x", 0.5, 1.0, True),
                                                   parity_module.Check("y", np.nan, 1.0, False)])
    assert not r and [c.name for c in r.failures] == ["x", "y"]


def test_greedy_answers_compare_up_to_the_references_end_of_text():
    from pixdeploy.config import EOS_ID

    ref = np.array([[7, EOS_ID, 9, 9], [7, 8, 9, 10], [EOS_ID, 1, 1, 1]])
    after_end_differs = np.array([[7, EOS_ID, 3, 3], [7, 8, 9, 10], [EOS_ID, 2, 2, 2]])
    assert parity_module.answer_match(after_end_differs, ref) == 1.0
    answer_differs = np.array([[7, 8, 9, 9], [7, 8, 9, 11], [EOS_ID, 1, 1, 1]])  # no end; last of a no-end row
    assert parity_module.answer_match(answer_differs, ref) == pytest.approx(1 / 3)


def test_onnxruntime_runs_the_function_bodies(tiny_bundle, tmp_path):
    """onnxruntime knows no pixdeploy kernels: it inlines each custom node's function body. Its
    optimized graph shows what ran: no pixdeploy:: node is left, the fused Attention of
    WindowAttention's body is."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_bundle / "image_encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    ran = [(n.domain, n.op_type) for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert not [op for op in ran if op[0] == "pixdeploy"]
    assert sum(1 for _, op in ran if op == "Attention") == 2  # one per image layer
    assert any(op == "Where" for _, op in ran)  # ColorFold's padding select


def test_graph_dims_carry_the_manifest_names(tiny_bundle):
    enc = onnx.load(str(tiny_bundle / "image_encoder.onnx"))
    dims = [d.dim_param or d.dim_value for d in enc.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["images", 32, 32, 3]


def test_export_patches_are_checked_before_any_is_applied(monkeypatch):
    """A renamed model function makes export refuse in one line, and nothing stays patched."""
    from pixdeploy.export.onnx_export import PATCHES, custom_ops

    import pixdeploy.model as model_module

    originals = {name: getattr(module, name) for module, name, _ in PATCHES}
    monkeypatch.delattr(model_module, "window_summary_attention")
    with pytest.raises(PixdeployError, match="pixdeploy.model.window_summary_attention no longer exists"):
        with custom_ops():
            pass
    assert model_module.fold_torch is originals["fold_torch"]
    assert model_module.window_attention is originals["window_attention"]
