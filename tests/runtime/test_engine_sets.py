"""Engine sets keyed by variant: fp32 and int8 engines for one GPU and TensorRT live in one bundle, and one rule
(`select_engine_set`) picks a set for the runtime, `triton`, `inspect` and `bench`. The engine files are written
by the test (real pixdeploy headers, marker plans: no TensorRT here), which is all the selection reads."""

import json
import shutil

import pytest
from click.testing import CliRunner
from pixdeploy.runtime import Bundle
from pixdeploy.runtime.bundle import adding_variant, select_engine_set

from pixdeploy.cli import main
from pixdeploy.errors import PixdeployError

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "cc": "9.0"}


def with_int8_variant(src, dst):
    """A copy of the bundle with a second variant named int8-tensorrt (the fp32 graphs copied: what is tested
    here is which files are chosen, not their numbers)."""
    shutil.copytree(src, dst)
    with adding_variant(dst, "int8-tensorrt", force=False, echo=lambda *_: None) as (staged, entry):
        for g in ("image_encoder", "decoder"):
            shutil.copyfile(dst / f"{g}.onnx", staged.dir / f"{g}.onnx")
        entry.update(precision="int8", target="tensorrt", graphs={g: {"file": staged.entry_file(f"{g}.onnx")}
                                                                  for g in ("image_encoder", "decoder")})
    return dst


@pytest.fixture
def two_variants(tiny_bundle, tmp_path, engine_set_writer):
    b = with_int8_variant(tiny_bundle, tmp_path / "b")
    engine_set_writer(b, tensorrt="10.15.1.29", variant="fp32", max_batch=4, **H100)
    engine_set_writer(b, tensorrt="10.15.1.29", variant="int8-tensorrt", max_batch=2, **H100)
    return b


def test_fp32_and_int8_engines_for_one_gpu_and_tensorrt_live_side_by_side(two_variants):
    b = Bundle(two_variants)  # verifies
    names = {s.variant: s.name for s in b.engine_sets()}
    assert names == {"fp32": "nvidia-h100-80gb-hbm3-trt10.15.1.29-fp32",
                     "int8-tensorrt": "nvidia-h100-80gb-hbm3-trt10.15.1.29-int8-tensorrt"}
    for variant in ("fp32", "int8-tensorrt"):
        chosen = select_engine_set(b, variant, tensorrt="10.15.1.29", compute_capability="9.0")
        assert chosen.variant == variant and chosen.name == names[variant]
        files = b.engine_files(chosen)
        assert files["decoder"].parent.name == names[variant]
    with pytest.raises(PixdeployError, match="no variant 'fp16'"):
        select_engine_set(b, "fp16", tensorrt="10.15.1.29", compute_capability="9.0")


def test_another_gpu_or_tensorrt_is_not_chosen(two_variants):
    b = Bundle(two_variants)
    with pytest.raises(PixdeployError, match="no engines for variant fp32, TensorRT 10.15.1.29, compute capability "
                                             r"8.7.*it has: .*build-engine .* --variant fp32"):
        select_engine_set(b, "fp32", tensorrt="10.15.1.29", compute_capability="8.7")
    with pytest.raises(PixdeployError, match="no engines for variant int8-tensorrt, TensorRT 10.16.0"):
        select_engine_set(b, "int8-tensorrt", tensorrt="10.16.0", compute_capability="9.0")


def test_version_compatible_sets_are_used_on_a_later_tensorrt_only_with_the_opt_in(tiny_bundle, tmp_path,
                                                                                  engine_set_writer):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    vc = engine_set_writer(b, tensorrt="10.8.0.43", version_compatible=True, **H100)
    with pytest.raises(PixdeployError, match=f"{vc} is version-compatible and embeds host code"):
        select_engine_set(Bundle(b), "fp32", tensorrt="10.15.1.29", compute_capability="9.0")
    assert select_engine_set(Bundle(b), "fp32", tensorrt="10.15.1.29", compute_capability="9.0",
                             allow_version_compatible=True).name == vc
    with pytest.raises(PixdeployError, match="no engines"):  # never on an older TensorRT
        select_engine_set(Bundle(b), "fp32", tensorrt="10.7.0", compute_capability="9.0", allow_version_compatible=True)
    exact = engine_set_writer(b, tensorrt="10.15.1.29", **{**H100, "gpu": "NVIDIA H100 PCIe"})
    assert select_engine_set(Bundle(b), "fp32", tensorrt="10.15.1.29", compute_capability="9.0",
                             allow_version_compatible=True).name == exact  # the exact build wins


def test_a_damaged_or_escaping_engine_set_is_refused(two_variants):
    b = Bundle(two_variants)
    chosen = select_engine_set(b, "fp32", tensorrt="10.15.1.29", compute_capability="9.0")
    path = b.engine_files(chosen)["decoder"]
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(PixdeployError, match="decoder.engine does not match its checksum"):
        Bundle(two_variants).engine_files(chosen)
    m = json.loads((two_variants / "manifest.json").read_text())
    m["engines"][chosen.name]["files"]["decoder"] = "/etc/passwd"
    (two_variants / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PixdeployError, match="a path outside the bundle"):
        Bundle(two_variants)


def test_triton_takes_the_engines_of_the_variant_asked_for(two_variants, tmp_path):
    for variant, batch in (("fp32", 4), ("int8-tensorrt", 2)):
        out = tmp_path / f"repo-{variant}"
        res = CliRunner().invoke(main, ["triton", str(two_variants), "-o", str(out), "--backend", "tensorrt",
                                        "--variant", variant])
        assert res.exit_code == 0, res.output
        plan = (out / "decoder" / "1" / "model.plan").read_bytes()
        assert plan == f"plan of decoder {variant} for NVIDIA H100 80GB HBM3 10.15.1.29".encode()  # no header
        enc = (out / "image_encoder" / "config.pbtxt").read_text()
        assert f"max_batch_size: {batch}" in enc  # from the engines' profiles, not a default
        dec = (out / "decoder" / "config.pbtxt").read_text()
        assert 'profile: "0"' in dec and 'profile: "1"' in dec  # prefill and decode profiles both served
        assert "TensorRT 10.15.1.29" in (out / "README.md").read_text()
    res = CliRunner().invoke(main, ["triton", str(two_variants), "-o", str(tmp_path / "r"), "--backend", "tensorrt",
                                    "--variant", "int8-tensorrt", "--max-batch", "8"])
    assert res.exit_code == 1 and "--max-batch 8 is larger than engine set" in res.output
    assert not (tmp_path / "r").exists()


def test_triton_refuses_an_ambiguous_choice_and_takes_a_named_set(two_variants, tmp_path, engine_set_writer):
    other = engine_set_writer(two_variants, tensorrt="10.3.0.30", gpu="Orin", cc="8.7")
    res = CliRunner().invoke(main, ["triton", str(two_variants), "-o", str(tmp_path / "r"), "--backend", "tensorrt"])
    assert res.exit_code == 1 and "has 2 engine sets for variant fp32" in res.output and "--engines NAME" in res.output
    res = CliRunner().invoke(main, ["triton", str(two_variants), "-o", str(tmp_path / "r"), "--backend", "tensorrt",
                                    "--engines", other])
    assert res.exit_code == 0, res.output
    assert b"Orin" in (tmp_path / "r" / "decoder" / "1" / "model.plan").read_bytes()


def test_triton_config_checks_catch_what_tritons_tensorrt_backend_refuses(two_variants):
    """The rules of tensorrt_backend model_state.cc / instance_state.cc, applied to configs over test headers."""
    from pixdeploy.export.triton import check_engine_config, graph_config
    from pixdeploy.runtime.engine_header import read_header

    b = Bundle(two_variants)
    files = b.engine_files(select_engine_set(b, "int8-tensorrt", tensorrt="10.15.1.29", compute_capability="9.0"))
    enc = graph_config("image_encoder", b.graphs["image_encoder"], "tensorrt", 8, 1)
    assert any("outside profile images" in p for p in check_engine_config(enc, read_header(files["image_encoder"])))
    dec = graph_config("decoder", b.graphs["decoder"], "tensorrt", 2, 1)
    assert any("instance group uses profiles ['0'] of 2" in p
               for p in check_engine_config(dec, read_header(files["decoder"])))
    dec.instance_group[0].profile.extend(["0", "1"])
    assert check_engine_config(dec, read_header(files["decoder"])) == []


def test_engine_sets_with_plugins_need_the_users_libraries(tiny_bundle, tmp_path, engine_set_writer):
    """Plugin libraries are recorded by name and loaded only from paths the user gives; the Triton repository
    says which server flag loads them."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    engine_set_writer(b, tensorrt="10.15.1.29", plugins=("libpixdeploy_plugins.so",), **H100)
    res = CliRunner().invoke(main, ["triton", str(b), "-o", str(tmp_path / "r"), "--backend", "tensorrt"])
    assert res.exit_code == 0, res.output
    assert "--backend-config=tensorrt,plugins=" in (tmp_path / "r" / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=" in res.output


def test_inspect_lists_every_engine_set(two_variants):
    res = CliRunner().invoke(main, ["inspect", str(two_variants)])
    assert res.exit_code == 0, res.output
    assert "trt10.15.1.29-fp32: variant fp32" in res.output
    assert "trt10.15.1.29-int8-tensorrt: variant int8-tensorrt" in res.output
