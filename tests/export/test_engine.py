"""build-engine without TensorRT: profiles from the manifest, options gated on the documented enums of each
TensorRT generation, and every refusal that happens before TensorRT is touched. The real build is the
`tensorrt`-marked test at the end (skipped where TensorRT or a GPU is missing)."""

import importlib.util
import json
import shutil

import pytest
from click.testing import CliRunner
from pixdeploy.export.engine import (
    build_settings,
    derive_profiles,
    gating_problems,
    polygraphy_config,
    preflight,
)
from pixdeploy.runtime import Bundle
from pixdeploy.runtime.engine_header import version_tuple

from pixdeploy.cli import main
from pixdeploy.cli.engine import parse_size
from pixdeploy.errors import PixdeployError
from pixdeploy.sequence import image_prompt

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
# What TensorRT 11 removed (release/10.16 vs release/11.0 headers); Polygraphy raises if asked for any.
REMOVED_IN_11 = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", "REJECT_EMPTY_ALGORITHMS", "WEIGHTLESS",
                 "CUBLAS", "CUBLAS_LT", "CUDNN"}


def test_profiles_from_the_manifest(tiny_bundle):
    b = Bundle(tiny_bundle)
    cfg = b.config
    (enc,) = derive_profiles("image_encoder", b.graphs["image_encoder"], cfg, max_batch=8)
    S = cfg.image_size
    assert enc.shapes["images"] == ((1, S, S, 3), (8, S, S, 3), (8, S, S, 3))
    assert enc.shapes["sizes"] == ((1, 2), (8, 2), (8, 2))
    prefill, decode = derive_profiles("decoder", b.graphs["decoder"], cfg, max_batch=2)
    assert (prefill.name, decode.name) == ("prefill", "decode")  # index 0 prefill, 1 decode, as the runtime expects
    assert prefill.shapes["embeds"][0] == (1, 2, cfg.dim)
    assert prefill.shapes["embeds"][2] == (2, cfg.max_seq_len, cfg.dim)
    assert prefill.shapes["embeds"][1][1] == len(image_prompt(cfg.n_windows, ()))  # opt: the image prompt's length
    assert decode.shapes["embeds"] == ((1, 1, cfg.dim), (2, 1, cfg.dim), (2, 1, cfg.dim))
    assert decode.shapes["input_pos"] == ((1,), (1,), (1,))
    cache = (cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
    assert decode.shapes["past_k_0"] == ((1, *cache), (2, *cache), (2, *cache))
    with pytest.raises(PixdeployError):
        derive_profiles("decoder", b.graphs["decoder"], cfg, max_batch=0)


@pytest.mark.parametrize("version", ["10.3.0.30", "10.8.0.43", "10.15.1.29", "11.0.0", "11.4.1"])
@pytest.mark.parametrize("options", [{}, {"version_compatible": True}, {"plugins": True, "workspace": 1 << 30}])
def test_settings_per_tensorrt_generation(version, options):
    """What pixdeploy asks of each TensorRT: the ONNX types decide precision (strongly typed, never a precision flag
    or calibrator), no parser flag, decomposable attention from 10.14. That every name exists in that TensorRT's
    bindings is checked against NVIDIA's wheels (tests/export/test_trt_names.py), and that the settings parse and
    build every graph, by NVIDIA's parser and builder (tests/export/test_nvidia_check.py)."""
    s = build_settings(version, **options)
    names = {*s.builder_flags, *s.network_flags, *s.parser_flags}
    assert names.isdisjoint(REMOVED_IN_11)
    assert "STRONGLY_TYPED" in s.network_flags
    assert s.parser_flags == ()
    assert s.decomposable_attention == (version_tuple(version) >= (10, 14))
    json.dumps(s.to_dict())  # names only: nothing TensorRT-numbered is persisted


def test_gating_catches_a_flag_tensorrt_11_removed():
    from pixdeploy.export.engine import BuildSettings

    assert gating_problems(BuildSettings("11.0.0", builder_flags=("FP16",))) == ["BuilderFlag.FP16"]
    assert gating_problems(BuildSettings("10.3.0", parser_flags=("ENABLE_PLUGIN_OVERRIDE",))) == \
        ["OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE"]
    with pytest.raises(PixdeployError, match="TensorRT 12"):
        build_settings("12.0")


def test_polygraphy_config_is_built_from_names_only():
    """CreateConfig receives no precision keyword; enum members are looked up by name on the TensorRT given."""
    pytest.importorskip("polygraphy")

    class Enum:  # the shape of tensorrt's enums: members looked up by attribute name
        def __getattr__(self, name):
            return f"trt.{name}"

    class FakeTensorRT:  # stands in only for enum lookup; nothing is built
        ProfilingVerbosity = MemoryPoolType = Enum()

    profiles = derive_profiles("image_encoder", {"inputs": {"images": {"shape": ["images", 4]}}}, _Cfg(), 2)
    cfg = polygraphy_config(build_settings("11.4.1", workspace=1 << 20, version_compatible=True), profiles, None,
                            FakeTensorRT())
    assert cfg.profiling_verbosity == "trt.DETAILED" and cfg.version_compatible is True
    assert cfg.memory_pool_limits == {"trt.WORKSPACE": 1 << 20}
    assert not any([cfg.fp16, cfg.int8, cfg.bf16, cfg.fp8, cfg.calibrator, cfg.tactic_sources,
                    cfg.precision_constraints])
    assert [dict(p.items()) for p in cfg.profiles][0]["images"].max == (2, 4)


class _Cfg:
    n_windows, max_seq_len = 4, 16


def bundle_with_profile(src, dst, name):
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["export_profile"] = {"name": name}
    (dst / "manifest.json").write_text(json.dumps(m))
    return Bundle(dst)


def test_refusals_before_tensorrt(tiny_bundle, tmp_path):
    ort_bundle = Bundle(tiny_bundle)  # exported for onnxruntime (no export_profile recorded: the default)
    with pytest.raises(PixdeployError, match="re-export it for TensorRT 10.15.1 with --target tensorrt-10.15"):
        preflight(ort_bundle, "10.15.1", [])
    new = bundle_with_profile(tiny_bundle, tmp_path / "b15", "tensorrt-10.15")
    with pytest.raises(PixdeployError, match="--target tensorrt-10.3"):
        preflight(new, "10.3.0.30", [])
    old = bundle_with_profile(tiny_bundle, tmp_path / "b3", "tensorrt-10.3")
    preflight(old, "10.3.0.30", [])
    with pytest.raises(PixdeployError, match="plugin library .*nope.so does not exist"):
        preflight(old, "10.8.0", [str(tmp_path / "nope.so")])
    plugin = tmp_path / "libplug.so"
    plugin.write_bytes(b"")
    notes = []
    preflight(old, "10.3.0.30", [str(plugin)], echo=notes.append)
    assert "always inlines" in notes[0]


def test_variant_resolution(tiny_bundle):
    b = Bundle(tiny_bundle)
    assert b.graph_path("decoder", "fp32") == b.path / "decoder.onnx"
    with pytest.raises(PixdeployError, match="no variant 'int8-tensorrt'; it has: fp32"):
        b.graph_path("decoder", "int8-tensorrt")


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_build_engine_without_tensorrt_says_how_to_get_it(tiny_bundle, tmp_path):
    b = bundle_with_profile(tiny_bundle, tmp_path / "b", "tensorrt-10.3")
    res = CliRunner().invoke(main, ["build-engine", str(b.path)])
    assert res.exit_code == 1
    assert "pip install tensorrt" in res.output and "python3-libnvinfer" in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith(f"error: no engine was built for {b.path}: TensorRT is not installed"), last
    assert not (b.path / "engines").exists()
    res = CliRunner().invoke(main, ["build-engine", str(b.path), "--variant", "fp16"])
    assert res.exit_code == 1 and "no variant 'fp16'" in res.output


def test_workspace_sizes():
    assert parse_size("2G") == 2 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("4096") == 4096
    for bad in ("", "0", "-1G", "nanG", "1T"):
        with pytest.raises(PixdeployError, match="--workspace"):
            parse_size(bad)


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT and a CUDA GPU (neither is installed here)")
def test_engines_answer_as_onnxruntime(tiny_checkpoint, tmp_path):
    """Export for this TensorRT, build, and run the parity gate through the TensorRT backend."""
    import tensorrt
    from pixdeploy.export.bundle import export_bundle
    from pixdeploy.export.engine import EngineBuildOptions, build_engines
    from pixdeploy.export.parity import check_parity, default_parity_images
    from pixdeploy.export.profiles import profile_for_tensorrt
    from pixdeploy.runtime import Pipeline

    from pixdeploy.checkpoint import Checkpoint

    target = profile_for_tensorrt(tensorrt.__version__).name
    bundle, _ = export_bundle(tiny_checkpoint, tmp_path / "b", target=target, echo=lambda *_: None)
    folder = build_engines(bundle.path, EngineBuildOptions(max_batch=4), echo=lambda *_: None)
    assert (folder / "decoder.engine").is_file() and Bundle(bundle.path).engine_sets()
    result = check_parity(Checkpoint(tiny_checkpoint).load_model(), Pipeline.load(bundle.path, backend="tensorrt"),
                          default_parity_images()[:4], steps=8)
    assert result, result.table()


def test_a_build_records_what_it_built(tiny_bundle, tmp_path, monkeypatch):
    """build_engines end to end with TensorRT's own calls faked (no GPU here): each graph is built with its
    profiles and the timing cache asked for, and the engine headers and the manifest's record
    describe the same build (the bundle's own engine check holds the headers to the record); the folder holds the
    engines and their layer lists, no index of its own."""
    from types import SimpleNamespace

    from pixdeploy.export import engine

    b = bundle_with_profile(tiny_bundle, tmp_path / "b", "tensorrt-10.15")
    monkeypatch.setattr(engine, "import_tensorrt", lambda: SimpleNamespace(__version__="10.15.1.29"))
    monkeypatch.setattr(engine, "gpu_identity", lambda: ("NVIDIA H200", "9.0"))
    built = []

    def build_graph(onnx_path, settings, profiles, timing_cache, plugins, trt):
        built.append((onnx_path.name, [p.name for p in profiles], timing_cache, settings.config["workspace"]))
        return f"plan of {onnx_path.name}".encode(), {"network_layers": 1, "plugin_layers": []}

    monkeypatch.setattr(engine, "build_graph", build_graph)
    monkeypatch.setattr(engine, "engine_layers", lambda plan, trt: [{"Name": "only"}])
    cache = tmp_path / "timing" / "t.cache"
    options = engine.EngineBuildOptions(max_batch=2, workspace=1 << 30, timing_cache=cache)
    folder = engine.build_engines(b.path, options, echo=lambda *_: None)
    assert built == [("image_encoder.onnx", ["images"], cache, 1 << 30),
                     ("decoder.onnx", ["prefill", "decode"], cache, 1 << 30)]
    again = Bundle(b.path)
    (chosen,) = again.engine_sets()
    assert folder == b.path / "engines" / chosen.name and chosen.variant == "fp32" and chosen.max_batch == 2
    headers = again.engine_headers(chosen)  # raises when a header disagrees with the record or the graphs
    assert all(h["settings"]["decomposable_attention"] and h["producer"].startswith("pixdeploy ")
               for h in headers.values())
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.engine", "decoder.layers.json",
                                                        "image_encoder.engine", "image_encoder.layers.json"]
    assert engine.is_engine_dir(folder)
    assert json.loads((folder / "decoder.layers.json").read_text()) == [{"Name": "only"}]


def test_engine_folder_is_listed_in_the_manifest_and_the_bundle_still_verifies(tiny_bundle, tmp_path,
                                                                              engine_set_writer):
    from pixdeploy.export.engine import is_engine_dir

    b = bundle_with_profile(tiny_bundle, tmp_path / "b", "tensorrt-10.3")
    name = engine_set_writer(b.path, gpu="Orin", tensorrt="10.3.0.30", cc="8.7", variant="fp32")
    again = Bundle(b.path)  # checksums of the graphs still verify
    assert again.manifest["engines"][name]["tensorrt"] == "10.3.0.30"
    assert f"engines/{name}/decoder.engine" in again.manifest["files"]
    assert not is_engine_dir(b.path)  # --force never replaces a folder that is not an engine folder
    assert is_engine_dir(b.path / "engines" / name)
