import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from pixdeploy.export import calibration
from pixdeploy.export.calibration import CalibrationError
from pixdeploy.export.quantize import quantize_bundle
from pixdeploy.runtime import Bundle, BundleError, Pipeline

from pixdeploy.cli import main
from pixdeploy.errors import PixdeployError


def snapshot(path):
    """Every file of a bundle with its bytes: 'as it was' means byte for byte."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def cosine_min(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


STEPS = 1  # greedy tokens compared: past the first, a seeded untrained model continues with noise
LOUD = 2.5e4  # pixel embeddings x this reach ~500: squares pass fp16's largest value (65504)


@pytest.fixture(scope="module")
def source(tiny_checkpoint, tmp_path_factory, digit_images_module, decisive_state):
    """A tiny model that answers decisively (its head scores four word tokens, far apart, like a trained
    model's) with loud pixel embeddings (a naive fp16 norm overflows on them), exported to a bundle."""
    from pixdeploy.export.bundle import export_bundle

    from pixdeploy.checkpoint import Checkpoint, save_checkpoint

    ck = Checkpoint(tiny_checkpoint)
    state = decisive_state(ck.model_state())
    state["pix_emb.weight"] = state["pix_emb.weight"] * LOUD
    root = tmp_path_factory.mktemp("quant")
    save_checkpoint(root / "ckpt", state, ck.config, ck.tokenizer, step=0)
    export_bundle(root / "ckpt", root / "fp32", images=digit_images_module, echo=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def digit_images_module():
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    return [Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8), "L").resize((24, 24)).convert("RGB")
            for i in range(8)]


@pytest.fixture(scope="module")
def int8_bundle(source, digit_images_module):
    """The bundle with an int8-tensorrt variant, calibrated on real digits; the cache kept."""
    shutil.copytree(source / "fp32", source / "bundle")
    cache = source / "calib.json"
    lines = []
    quantize_bundle(source / "bundle", "int8", "tensorrt", calib_cache=cache, parity_images=digit_images_module,
                    steps=STEPS, echo=lines.append)
    return source / "bundle", cache, lines


def test_old_bundle_is_its_fp32_variant(tiny_bundle):
    b = Bundle(tiny_bundle)
    assert list(b.variants) == ["fp32"] and list(b.manifest["variants"]) == ["fp32"]
    assert b.graph_path("decoder") == b.graph_path("decoder", "fp32") == tiny_bundle / "decoder.onnx"
    with pytest.raises(BundleError, match="no variant 'int8-cpu'"):
        b.graph_path("decoder", "int8-cpu")


def test_int8_tensorrt_is_symmetric_qdq_on_the_matmuls_only(int8_bundle, photo):
    path, cache, lines = int8_bundle
    b = Bundle(path)  # verifies every checksum, the variant's included
    v = b.variant("int8-tensorrt")
    assert v.precision == "int8" and v.target == "tensorrt" and v.parity.passed
    # One parity record shape: every variant's, fp32's (written by export) included, names its precision and checks.
    assert [(p.precision, bool(p.checks)) for p in (b.variant("fp32").parity, v.parity)] == \
        [("fp32", True), ("int8", True)]
    assert all(f in b.manifest["files"] for f in v.graphs.values())
    assert json.loads((b.graph_path("decoder", "int8-tensorrt").parent / "parity.json").read_text())["passed"]
    for graph in ("image_encoder", "decoder"):
        proto = onnx.load(str(b.graph_path(graph, "int8-tensorrt")))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        producer = {o: n for n in proto.graph.node for o in n.output}
        quantized = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
        assert quantized
        for n in quantized:  # both operands come through DequantizeLinear with zero point 0
            act, weight = (producer[i] for i in n.input[:2])
            assert act.op_type == weight.op_type == "DequantizeLinear"
            assert not inits[act.input[2]].any() and not inits[weight.input[2]].any()
            assert inits[act.input[1]].size == 1  # activations per tensor
            w = inits[weight.input[0]]
            out_axis = 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
            assert w.dtype == np.int8 and inits[weight.input[1]].shape == (w.shape[out_axis],)  # per output channel
        # Attention, norms and the KV cache stay in floating point: no Q/DQ feeds them.
        for n in proto.graph.node:
            if n.op_type in ("Attention", "RMSNormalization", "ScatterElements", "WindowAttention"):
                assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in n.input)
    fp32 = Pipeline.load(path, device="cpu").embed([photo])
    int8 = Pipeline.load(path, device="cpu", variant="int8-tensorrt").embed([photo])
    assert cosine_min(int8, fp32) >= 0.99


def test_second_run_reuses_the_cache_and_cpu_int8_passes(int8_bundle, digit_images_module, monkeypatch):
    path, cache, _ = int8_bundle
    ranges = json.loads(cache.read_text())

    def no_recompute(*a, **k):
        raise AssertionError("ranges were measured again")

    monkeypatch.setattr("pixdeploy.export.int8.measure_ranges", no_recompute)
    other = path.parent / "other"
    shutil.copytree(path, other)
    lines = []
    _, result = quantize_bundle(other, "int8", "tensorrt", calib_cache=cache, force=True,
                                parity_images=digit_images_module, steps=STEPS, echo=lines.append)
    assert result and any("nothing recomputed" in line for line in lines)
    assert json.loads(cache.read_text()) == ranges
    # Same calibration, same graphs: the replaced variant's files are gone and nothing else is left.
    assert len(list((other / "variants").iterdir())) == 1
    # int8-cpu's static schemes take the same ranges from the same cache: nothing measured again either.
    _, result = quantize_bundle(other, "int8", "cpu", calib_cache=cache, parity_images=digit_images_module,
                                steps=STEPS, echo=lines.append)
    assert result and set(Bundle(other).variants) == {"fp32", "int8-tensorrt", "int8-cpu"}


def test_cache_of_another_model_is_refused(int8_bundle, tmp_path):
    path, cache, _ = int8_bundle
    data = json.loads(cache.read_text())
    data["graphs"]["decoder"]["sha256"] = "0" * 64
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(data))
    before = snapshot(path)
    with pytest.raises(CalibrationError, match="belongs to another model"):
        quantize_bundle(path, "int8", "tensorrt", calib_cache=foreign, force=True, echo=lambda *_: None)
    assert snapshot(path) == before


def bad_input_cases(path, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    with open(damaged / "decoder.onnx", "ab") as f:
        f.write(b"x")
    return [
        ([str(path), "--precision", "int4"], "unknown precision 'int4'"),
        ([str(path), "--precision", "int8", "--target", "jetson"], "unknown target 'jetson'"),
        ([str(path), "--precision", "int8", "--calib-count", "0"],
         "--calib-count must be at least 1"),
        ([str(path), "--precision", "int8", "--force", "--calib", str(empty)], f"{empty} holds no images"),
        ([str(path), "--precision", "int8", "--force", "--calib", str(tmp_path / "nope")], "does not exist"),
        ([str(path), "--precision", "fp16", "--calib", str(empty)], "fp16 needs no calibration"),
        ([str(path), "--precision", "int8", "--target", "cpu", "--calib", str(empty)], f"{empty} holds no images"),
        ([str(path), "--precision", "int8"], "already has variant int8-tensorrt; pass --force"),
        ([str(damaged), "--precision", "int8"], "decoder.onnx does not match its checksum"),
    ]


def test_bad_input_is_one_line_and_leaves_the_bundle(int8_bundle, tmp_path):
    path, _, _ = int8_bundle
    before = snapshot(path)
    for args, message in bad_input_cases(path, tmp_path):
        r = CliRunner().invoke(main, ["quantize", *args])
        assert r.exit_code == 1, (args, r.output)
        assert r.output.count("\n") == 1 and r.output.startswith("error: ") and message in r.output, r.output
    assert snapshot(path) == before


def test_kill_9_while_quantizing_leaves_the_bundle_as_it_was(int8_bundle, digit_images_module, tmp_path):
    path, cache, _ = int8_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(path, bundle)
    before = snapshot(bundle)
    cmd = [sys.executable, "-m", "pixdeploy.cli", "quantize", str(bundle), "--precision", "int8", "--target", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once graphs are being written
        staged = list((bundle / "variants").glob(".int8-cpu-*.tmp-*"))
        if staged and any(staged[0].iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "quantize ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(Bundle(bundle).path).keys() >= before.keys()
    Bundle(bundle).verify()
    assert {k: v for k, v in snapshot(bundle).items() if k in before} == before
    assert "int8-cpu" not in Bundle(bundle).variants
    # The next run removes what the killed one left and succeeds.
    lines = []
    quantize_bundle(bundle, "int8", "cpu", parity_images=digit_images_module, steps=STEPS, echo=lines.append)
    assert any("interrupted run" in line for line in lines)
    assert sorted(p.name.split("-")[0] for p in (bundle / "variants").iterdir()) == ["int8", "int8"]


def test_a_run_finishing_meanwhile_keeps_its_variant(int8_bundle, digit_images_module, tmp_path):
    """Two quantize runs overlapping on one bundle: the one that finishes last reads the manifest again
    under the bundle's lock, so the other's variant stays; the same variant added twice is refused."""
    path, _, _ = int8_bundle

    def run(bundle, precision, target="tensorrt", meanwhile=None, echo=lambda *_: None):
        extra = None if meanwhile is None else (lambda _pipe: [meanwhile()] and [])  # before the manifest switch
        return quantize_bundle(bundle, precision, target, parity_images=digit_images_module, steps=STEPS,
                               extra_checks=extra, echo=echo)

    both = tmp_path / "both"
    shutil.copytree(path, both)
    lines = []
    run(both, "fp16", meanwhile=lambda: run(both, "int8", "cpu", echo=lines.append))
    assert set(Bundle(both).variants) == {"fp32", "int8-tensorrt", "int8-cpu", "fp16"}
    Bundle(both).verify()
    assert not any("interrupted run" in line for line in lines)  # fp16's folder in the making was left alone

    twice = tmp_path / "twice"
    shutil.copytree(path, twice)
    with pytest.raises(PixdeployError, match="another pixdeploy process added variant fp16 .* --force"):
        run(twice, "fp16", meanwhile=lambda: run(twice, "fp16"))
    Bundle(twice).verify()
    assert set(Bundle(twice).variants) == {"fp32", "int8-tensorrt", "fp16"}
    assert len(list((twice / "variants").iterdir())) == 2  # the refused run's folder is gone


def test_a_writer_waits_for_the_bundle_lock(tiny_bundle):
    from pixdeploy.files import locked_dir

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pixdeploy.files import locked_dir\n"
                               f"with locked_dir({str(tiny_bundle)!r}):\n print('held', flush=True); time.sleep(2)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lines, t0 = [], time.monotonic()
    with locked_dir(tiny_bundle, echo=lines.append):
        waited = time.monotonic() - t0
    holder.wait(10)
    assert waited > 0.5 and lines == [f"waiting for another pixdeploy process to finish changing {tiny_bundle}"]


def test_graph_files_outside_the_bundle_are_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["variants"]["int8-cpu"] = {"precision": "int8", "target": "cpu",
                                 "graphs": {"image_encoder": {"file": "image_encoder.onnx"},
                                            "decoder": {"file": "../../etc/passwd"}}}
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle(copy)  # every variant's graphs are checked when the bundle is read
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle(copy, verify=False).graph_path("decoder", "int8-cpu")


def test_calibration_images_are_spread_and_counted(tmp_path, digit_images):
    for i, img in enumerate(digit_images[0][:10]):
        img.save(tmp_path / f"{i:02d}.png")
    picked = calibration.calibration_images(tmp_path, 3)
    assert [p.name for p in picked] == ["00.png", "03.png", "06.png"]
    with pytest.raises(PixdeployError, match="at least 1"):
        calibration.calibration_images(tmp_path, 0)


def test_fp16_norms_stay_finite_where_a_naive_fp16_norm_overflows(source, digit_images_module, tmp_path):
    """On activations whose squares overflow fp16 the fp16 variant keeps norm statistics (and softmax,
    RoPE, logits) in fp32, and answers as the fp32 model does."""
    import torch

    from pixdeploy.checkpoint import Checkpoint

    h = Checkpoint(source / "ckpt").model_state()["pix_emb.weight"].half()
    assert torch.isinf(h.pow(2).sum(-1)).all() and torch.isfinite(h).all()  # what a naive fp16 norm would see

    images = digit_images_module
    shutil.copytree(source / "fp32", tmp_path / "b")
    _, result = quantize_bundle(tmp_path / "b", "fp16", "cpu", parity_images=images, steps=STEPS, echo=lambda *_: None)
    assert result and {c.name for c in result.checks} == {"embed_cosine_min", "logits_cosine_min", "greedy_match"}
    b = Bundle(tmp_path / "b")
    assert b.variant("fp16").target == "any"
    vectors = Pipeline.load(b.path, device="cpu", variant="fp16").embed(images)
    assert np.isfinite(vectors).all() and cosine_min(vectors, Pipeline.load(b.path, device="cpu").embed(images)) > 0.999

    for graph in ("image_encoder", "decoder"):
        proto = onnx.load(str(b.graph_path(graph, "fp16")))
        weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert len(weights) >= 8  # the matmuls run in fp16
        nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
        attrs = {(n.op_type, a.name): a.i for n in nodes for a in n.attribute}
        assert attrs[("RMSNormalization", "stash_type")] == onnx.TensorProto.FLOAT
        assert attrs[("Attention", "softmax_precision")] == onnx.TensorProto.FLOAT
        types = {i.name: i.type.tensor_type.elem_type for i in (*proto.graph.input, *proto.graph.output)}
        assert set(types.values()) <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.UINT8}
    head = [n for n in onnx.load(str(b.graph_path("decoder", "fp16"))).graph.node if n.op_type == "Gemm"]
    inits = {i.name: i.data_type for i in onnx.load(str(b.graph_path("decoder", "fp16"))).graph.initializer}
    assert [inits[n.input[1]] for n in head] == [onnx.TensorProto.FLOAT]  # logits in fp32


def test_every_variant_keeps_its_bundles_ir_version_and_operator_table(tiny_checkpoint, tmp_path):
    """An int8-tensorrt variant of a tensorrt-10.3 bundle is written at IR 10, as its fp32 graphs are (TensorRT
    10.3's parser reads IR 10), and fits the 10.3 operator table with its data types."""
    import onnx
    from pixdeploy.export.bundle import export_bundle
    from pixdeploy.export.quantize import VARIANTS, Job, QuantizeOptions, make_graphs
    from pixdeploy.export.trt_support import unsupported

    from pixdeploy.checkpoint import Checkpoint

    bundle, _ = export_bundle(tiny_checkpoint, tmp_path / "b", target="tensorrt-10.3", echo=lambda *_: None)
    out = tmp_path / "int8"
    out.mkdir()
    job = Job(bundle, VARIANTS[("int8", "tensorrt")], QuantizeOptions(), Checkpoint(tiny_checkpoint).load_model(),
              lambda *_: None, calibration.calibration_images(None, 2), [])
    make_graphs(job, out)
    for g in ("image_encoder", "decoder"):
        proto = onnx.load(str(out / f"{g}.onnx"))
        assert proto.ir_version == 10 == onnx.load(str(bundle.graph_path(g))).ir_version
        assert unsupported(proto, "10.3") == []


# ---- int8-cpu: the scheme measured fastest here that passes parity ----


def rigged(scores: dict):
    """A measurement that reports ``scores`` (scheme -> ratio to fp32) instead of timing anything."""
    calls = []

    def measure(bundle, candidates, images):
        calls.append(sorted(candidates))
        return {n: {"encoder": {"p50": scores.get(n, 1.0), "p90": 1.0, "p99": 1.0},
                    "decoder_step": {"p50": scores.get(n, 1.0), "p90": 1.0, "p99": 1.0}, "score": scores.get(n, 1.0)}
                for n in candidates}

    measure.calls = calls
    return measure


@pytest.fixture
def cpu_copy(int8_bundle, tmp_path):
    path, cache, _ = int8_bundle
    shutil.copytree(path, tmp_path / "b")
    return tmp_path / "b", cache


def test_int8_cpu_measures_here_and_records_scheme_ratios_and_class(cpu_copy, digit_images_module):
    from pixdeploy.export.quantize import CPU_SCHEMES

    from pixdeploy.cpu import cpu_class

    path, cache = cpu_copy
    lines = []
    _, result = quantize_bundle(path, "int8", "cpu", calib_cache=cache, parity_images=digit_images_module,
                                steps=STEPS, echo=lines.append)  # the real measurement, on this machine
    assert result
    record = Bundle(path).cpu_scheme("int8-cpu")
    assert record.scheme in CPU_SCHEMES and record.isa == cpu_class() and record.isa != "other"
    # The fused decoders need a head size of a multiple of 16 (tiny's is 24): tests/export/test_fused_decoder.py
    assert set(record.ratios_vs_fp32) == {n for n, s in CPU_SCHEMES.items() if s.fused_bits is None}
    for r in record.ratios_vs_fp32.values():
        assert all(r[st][q] > 0 for st in ("encoder", "decoder_step") for q in ("p50", "p90", "p99"))
    best = max(record.ratios_vs_fp32, key=lambda n: record.ratios_vs_fp32[n]["score"])
    assert record.scheme == best and record.rejected_by_parity == {}
    assert Bundle(path).variant("int8-cpu").method == CPU_SCHEMES[best].method
    out = CliRunner().invoke(main, ["inspect", str(path)]).output
    assert f"int8-cpu: int8 scheme {best}, measured fastest on CPU class {cpu_class()} (this CPU's too)" in out
    assert f"    {best}: encoder " in out and "<- kept" in out
    assert Bundle(path).cpu_scheme("fp32") is None


def test_a_rigged_measurement_picks_the_fastest_scheme(cpu_copy, digit_images_module):
    path, cache = cpu_copy
    for fastest in ("static-u8s8-qdq", "dynamic-reduced-range"):
        measure = rigged({fastest: 2.5, "dynamic": 1.5})
        quantize_bundle(path, "int8", "cpu", calib_cache=cache, parity_images=digit_images_module, steps=STEPS,
                        force=True, echo=lambda *_: None, measure=measure)
        record = Bundle(path).cpu_scheme("int8-cpu")
        assert record.scheme == fastest and record.ratios_vs_fp32[fastest]["score"] == 2.5
        assert len(measure.calls) == 1
    # The graphs kept are the scheme's: static Q/DQ has QuantizeLinear nodes, dynamic has DynamicQuantizeLinear.
    ops = {n.op_type for n in onnx.load(str(Bundle(path).graph_path("image_encoder", "int8-cpu"))).graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops


def test_a_scheme_failing_parity_is_not_chosen(cpu_copy, digit_images_module, monkeypatch):
    from onnx import numpy_helper as nh
    from pixdeploy.export import cpu_schemes as q

    real = q.make_cpu_scheme
    broken = q.CpuScheme("broken-weights", "weights negated", False, {"reduce_range": False})

    def make(scheme, src, dst, nodes, ranges):
        if scheme is not broken:
            return real(scheme, src, dst, nodes, ranges)
        proto = onnx.load(str(src))  # a scheme whose graphs answer wrongly: every matmul weight negated
        weights = {n.input[1] for n in proto.graph.node if n.name in nodes}
        for init in proto.graph.initializer:
            if init.name in weights:
                init.CopyFrom(nh.from_array(-nh.to_array(init), init.name))
        onnx.save(proto, str(dst))

    monkeypatch.setattr(q, "make_cpu_scheme", make)
    monkeypatch.setitem(q.CPU_SCHEMES, broken.name, broken)
    path, cache = cpu_copy
    lines = []
    quantize_bundle(path, "int8", "cpu", calib_cache=cache, parity_images=digit_images_module, steps=STEPS,
                    echo=lines.append, measure=rigged({"broken-weights": 9.0, "static-u8s8-qdq": 2.0}))
    record = Bundle(path).cpu_scheme("int8-cpu")
    assert record.scheme == "static-u8s8-qdq"
    assert "logits_cosine_min=-" in record.rejected_by_parity["broken-weights"]
    assert any("broken-weights failed parity" in line for line in lines)
    assert Bundle(path).variant("int8-cpu").calibration.images > 0  # a static scheme records its calibration


def test_every_scheme_failing_parity_leaves_the_bundle(cpu_copy, digit_images_module, monkeypatch):
    from pixdeploy.export.parity import ParityError

    from pixdeploy.parity_limits import THRESHOLDS

    path, cache = cpu_copy
    before = snapshot(path)
    monkeypatch.setitem(THRESHOLDS, "int8", {"embed_cosine_min": 1.5})  # no int8 graph points that way
    with pytest.raises(ParityError, match="int8-cpu failed its parity gate"):
        quantize_bundle(path, "int8", "cpu", calib_cache=cache, parity_images=digit_images_module, steps=STEPS,
                        echo=lambda *_: None, measure=rigged({}))
    assert snapshot(path) == before


def test_loading_on_a_cpu_of_another_class_warns_in_one_line(cpu_copy, digit_images_module, monkeypatch, photo,
                                                              tmp_path):
    from pixdeploy.errors import CpuClassWarning

    path, cache = cpu_copy
    quantize_bundle(path, "int8", "cpu", calib_cache=cache, parity_images=digit_images_module, steps=STEPS,
                    echo=lambda *_: None, measure=rigged({"dynamic": 3.0}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CpuClassWarning)
        Pipeline.load(path, device="cpu", variant="int8-cpu").close()  # the same class: no warning
    monkeypatch.setattr("pixdeploy.cpu.cpu_class", lambda: "neon-dotprod")  # never the class of an x86 runner
    with pytest.warns(CpuClassWarning, match="measured fastest on a .* CPU; this CPU is neon-dotprod"):
        with Pipeline.load(path, device="cpu", variant="int8-cpu") as pipe:
            assert pipe.embed([photo]).shape[0] == 1  # it still runs
    photo.save(tmp_path / "p.png")
    r = CliRunner().invoke(main, ["generate", str(path), str(tmp_path / "p.png"), "--variant",
                                                  "int8-cpu", "--max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "this CPU is neon-dotprod" in warned[0] and r.stderr.count("\n") == 1
