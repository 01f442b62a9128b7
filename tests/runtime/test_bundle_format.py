"""The bundle format module: the one owner of manifest.json, what it records (variants, the KV-cache contract),
format-1 bundles, and a bundle as a closed, untrusted folder (paths inside it, no symlink, checksummed reads,
sweeps that delete only what pixdeploy made)."""

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pixdeploy.runtime import Bundle, Pipeline
from pixdeploy.runtime.bundle import BundleError, mark_variant_folder, sweep_variants

from pixdeploy.cli import main
from pixdeploy.errors import PixdeployError

ROOT = Path(__file__).resolve().parents[2]


def copy(src, dst) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit(bundle: Path, change) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_only_the_format_module_names_the_manifest():
    """Apart from the format module's layout, no code spells manifest.json: a copy or a hash uses its constant."""
    allowed = {"runtime/bundle/layout.py": "the owner: names it"}  # everyone else uses its constant, MANIFEST
    found = set()
    for folder in ("pixdeploy", "export", "runtime"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value == "manifest.json":
                    found.add(path.relative_to(ROOT).as_posix())
    assert found - set(allowed) == set(), found - set(allowed)


def test_the_manifest_records_every_variant_and_the_cache_contract(tiny_bundle):
    b = Bundle(tiny_bundle)
    assert b.manifest["format_version"] == 2 and list(b.manifest["variants"]) == ["fp32"]
    pairs = b.cache_pairs()
    assert len(pairs) == 2 * b.config.n_layers
    assert pairs[0].past == "past_k_0" and pairs[0].present == "present_k_0" and pairs[0].dtype == "float32"
    assert pairs[0].shape == ("batch", b.config.n_kv_heads, b.config.max_seq_len, b.config.head_dim)


def test_the_runtime_reads_the_cache_contract_from_the_manifest(tiny_bundle, tmp_path, photo):
    """Pairs recorded in another order still pair each output with its own input (no name rewriting)."""
    b = copy(tiny_bundle, tmp_path / "b")
    edit(b, lambda m: m["graphs"]["decoder"]["cache"].reverse())
    want = Pipeline.load(tiny_bundle, device="cpu").generate(photo, max_new_tokens=6, stop=None)
    assert Pipeline.load(b, device="cpu").generate(photo, max_new_tokens=6, stop=None) == want
    edit(b, lambda m: m["graphs"]["decoder"]["cache"][0].update(present="logits_x"))
    with pytest.raises(BundleError, match="KV-cache pair past_v_1 -> logits_x is not among the decoder's"):
        Bundle(b)
    edit(b, lambda m: m["graphs"]["decoder"].pop("cache"))
    with pytest.raises(BundleError, match="records no KV-cache pairs"):
        Bundle(b)


def test_a_format_1_bundle_still_loads_and_answers_the_same(tiny_bundle, tmp_path, photo):
    b = copy(tiny_bundle, tmp_path / "v1")

    def to_v1(m):
        m["format_version"] = 1
        for g, entry in m["variants"].pop("fp32")["graphs"].items():
            m["graphs"][g]["file"] = entry["file"]
        m["graphs"]["decoder"].pop("cache")
        m.pop("variants"), m.pop("engines")

    edit(b, to_v1)
    old = Bundle(b)
    assert old.format_version == 1 and list(old.variants) == ["fp32"] and len(old.cache_pairs()) == 4
    want = Pipeline.load(tiny_bundle, device="cpu").embed([photo])
    np.testing.assert_array_equal(Pipeline.load(b, device="cpu").embed([photo]), want)
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code == 0 and "bundle format 1" in res.output, res.output


def test_a_variant_written_by_an_earlier_format_2_quantize_still_loads(tiny_bundle, tmp_path, photo):
    """Earlier versions of format 2 copied each graph's signature next to a variant's file: such a bundle loads
    and answers as before (the top-level signatures are the ones checked)."""
    b = copy(tiny_bundle, tmp_path / "older")
    edit(b, lambda m: m["variants"]["fp32"]["graphs"].update(
        {g: {**m["graphs"][g], **d} for g, d in m["variants"]["fp32"]["graphs"].items()}))
    assert "inputs" in json.loads((b / "manifest.json").read_text())["variants"]["fp32"]["graphs"]["decoder"]
    want = Pipeline.load(tiny_bundle, device="cpu").generate(photo, max_new_tokens=4, stop=None)
    assert Pipeline.load(b, device="cpu").generate(photo, max_new_tokens=4, stop=None) == want
    assert CliRunner().invoke(main, ["inspect", str(b)]).exit_code == 0


def test_a_format_1_engine_set_is_not_used(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path / "v1")
    edit(b, lambda m: m.update(format_version=1, engines={"orin-trt10.3.0.30": {"variant": "fp32"}}))
    assert Bundle(b).engine_sets() == []


@pytest.mark.parametrize("name", ["manifest.json", "decoder.onnx", "tokenizer.json", "parity.json"])
def test_symlinks_inside_a_bundle_are_refused_before_anything_is_read(tiny_bundle, tmp_path, name):
    b = copy(tiny_bundle, tmp_path / "b")
    outside = tmp_path / f"outside-{name}"
    shutil.move(b / name, outside)
    (b / name).symlink_to(outside)
    with pytest.raises(BundleError, match="symlink"):
        Bundle(b)
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code == 1 and "symlink" in res.output and "Traceback" not in res.output


def test_a_variants_folder_that_is_a_symlink_is_refused_and_its_target_untouched(tiny_bundle, tmp_path):
    from pixdeploy.export.quantize import quantize_bundle

    b = copy(tiny_bundle, tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "file.txt").write_text("keep me")
    (elsewhere / "int8-cpu-0123456789abcdef").mkdir()  # named like a variant folder: still not ours
    (b / "variants").symlink_to(elsewhere)
    with pytest.raises(BundleError, match="variants passes through a symlink"):
        quantize_bundle(b, "int8", "cpu", echo=lambda *_: None)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["file.txt", "int8-cpu-0123456789abcdef"]
    (b / "variants").unlink()
    (b / "variants").symlink_to("..")
    with pytest.raises(BundleError, match="symlink"):
        quantize_bundle(b, "int8", "cpu", echo=lambda *_: None)
    assert (tmp_path / "elsewhere" / "file.txt").read_text() == "keep me"


def test_the_sweep_removes_only_folders_pixdeploy_made(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path / "b")
    variants = b / "variants"
    variants.mkdir()
    orphan = variants / "int8-cpu-18f2a3b4c5d6e7f8"  # what adding_variant names and marks, listed nowhere
    orphan.mkdir()
    mark_variant_folder(orphan, "int8-cpu")
    keep = [variants / "notes.txt", variants / "my-folder", variants / "calib.json"]
    keep[0].write_text("mine")
    keep[1].mkdir()
    keep[2].write_text("{}")
    link = variants / "fp16-0123456789abcdef"
    link.symlink_to(tmp_path)  # a variant-like name that is a symlink: never followed, never removed
    said = []
    sweep_variants(b, said.append)
    assert not orphan.exists() and all(p.exists() for p in keep) and link.is_symlink()
    assert said == ["removed variants/int8-cpu-18f2a3b4c5d6e7f8, left by an interrupted run"]


def test_a_file_missing_from_the_checksum_table_is_never_read(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path / "b")
    edit(b, lambda m: m["files"].pop("parity.json"))
    assert Bundle(b).parity_report() is None  # present on disk, unlisted: not opened
    with pytest.raises(BundleError, match="parity.json is not among the checksummed files"):
        Bundle(b).checked("parity.json")
    edit(b, lambda m: m["files"].pop("tokenizer.json"))
    with pytest.raises(BundleError, match="manifest lists no tokenizer.json|tokenizer.json is not among"):
        Bundle(b)


def test_a_manifest_config_that_does_not_match_the_graphs_is_refused(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path / "b")
    edit(b, lambda m: m["config"].update(dim=m["config"]["dim"] * 2))
    with pytest.raises(BundleError, match="config does not match graph"):
        Bundle(b)


def test_text_from_a_bundle_is_printed_escaped(tiny_bundle, tmp_path):
    b = copy(tiny_bundle, tmp_path / "b")
    edit(b, lambda m: m.update(producer="pixdeploy \x1b]0;owned\x07\x1b[2J"))
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output and "\\x1b]0;owned\\x07" in res.output


def test_an_output_inside_the_bundle_it_reads_is_refused(tiny_bundle, tmp_path, photo):
    b = copy(tiny_bundle, tmp_path / "b")
    photo.save(tmp_path / "p.png")
    before = (b / "text_embeddings.npy").read_bytes()
    for out in (b / "text_embeddings.npy", b / "new.npy"):
        res = CliRunner().invoke(main, ["embed", str(b), str(tmp_path / "p.png"), "-o", str(out)])
        assert res.exit_code == 1 and "which this command reads" in res.output, res.output
    assert (b / "text_embeddings.npy").read_bytes() == before and not (b / "new.npy").exists()
    res = CliRunner().invoke(main, ["triton", str(b), "-o", str(b / "repo"), "--backend", "python"])
    assert res.exit_code == 1 and "which this command reads" in res.output
    assert Bundle(b)  # still verifies


def test_pipelines_and_runners_close(tiny_bundle, photo):
    with Pipeline.load(tiny_bundle, device="cpu") as pipe:
        pipe.embed([photo])
    assert pipe.encoder.session is None and pipe.decoder.session is None
    assert os.path.isdir(tiny_bundle)


def test_graphs_swapped_between_entries_are_refused_by_inspect_and_loading_alike(tiny_bundle, tmp_path):
    """Both files still match their checksums: only their signatures give the swap away."""
    b = copy(tiny_bundle, tmp_path / "b")
    edit(b, lambda m: m["variants"]["fp32"].update(graphs={"image_encoder": {"file": "decoder.onnx"},
                                                           "decoder": {"file": "image_encoder.onnx"}}))
    with pytest.raises(PixdeployError, match="image_encoder of variant fp32.* does not match its manifest entry"):
        Pipeline.load(b, device="cpu")
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code == 1 and "does not match its manifest entry" in res.output


def test_a_graph_that_outputs_nan_is_refused_in_one_line_naming_it(tiny_bundle, tmp_path, photo):
    """A weight turned NaN, checksums recomputed: generate and embed refuse instead of printing an empty answer
    or writing NaN embeddings."""
    import onnx
    from pixdeploy.export.bundle import write_manifest

    b = copy(tiny_bundle, tmp_path / "b")
    proto = onnx.load(str(b / "image_encoder.onnx"))
    init = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 1)
    values = onnx.numpy_helper.to_array(init).copy()
    values[:] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(proto, str(b / "image_encoder.onnx"))
    m = json.loads((b / "manifest.json").read_text())
    write_manifest(b, Bundle(b, verify=False).config, {"source": m["source"], "export_profile": m["export_profile"],
                                                       "parity": m["variants"]["fp32"]["parity"]})
    photo.save(tmp_path / "p.png")
    for args in (["generate", str(b), str(tmp_path / "p.png")],
                 ["embed", str(b), str(tmp_path / "p.png"), "-o", str(tmp_path / "v.npy")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert "image encoder of variant fp32" in res.output and "NaN or infinite" in res.output
    assert not (tmp_path / "v.npy").exists()


def test_external_tensor_files_must_lie_inside_the_bundle_and_be_checksummed(tiny_bundle, tmp_path, photo):
    """A graph that keeps its weights in an external file: loaded when that file is inside the bundle and
    listed with its checksum; refused, before any runtime opens it, when it points outside or is unlisted."""
    import onnx
    from pixdeploy.export.bundle import write_manifest

    def with_external(name: str, location: str) -> Path:
        b = copy(tiny_bundle, tmp_path / name)
        proto = onnx.load(str(b / "decoder.onnx"))
        onnx.save_model(proto, str(b / "decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="decoder.weights")
        if location != "decoder.weights":  # the graph names another file: rewrite its locations
            proto = onnx.load(str(b / "decoder.onnx"), load_external_data=False)
            for t in proto.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = location
            onnx.save_model(proto, str(b / "decoder.onnx"))
        m = json.loads((b / "manifest.json").read_text())
        write_manifest(b, Bundle(b, verify=False).config,
                       {"source": m["source"], "parity": m["variants"]["fp32"]["parity"]})
        return b

    inside_b = with_external("inside", "decoder.weights")
    want = Pipeline.load(tiny_bundle, device="cpu").generate(photo, max_new_tokens=4, stop=None)
    assert Pipeline.load(inside_b, device="cpu").generate(photo, max_new_tokens=4, stop=None) == want
    (inside_b / "decoder.weights").write_bytes(b"\0" * (inside_b / "decoder.weights").stat().st_size)
    with pytest.raises(BundleError, match="decoder.weights does not match its checksum"):
        Bundle(inside_b)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    outside = with_external("outside", "../secret.bin")
    with pytest.raises(BundleError, match=r"keeps .* in \.\./secret\.bin, a path outside the bundle"):
        Bundle(outside).graph_path("decoder")  # a variant's graphs are checked when it is first used
    with pytest.raises(BundleError, match=r"keeps .* in \.\./secret\.bin, a path outside the bundle"):
        Pipeline.load(outside, device="cpu")
