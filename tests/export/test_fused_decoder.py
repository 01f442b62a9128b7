"""The fused CPU decoder (onnxruntime's GroupQueryAttention, SkipSimplifiedLayerNormalization, MatMulNBits):
the same answers as PyTorch, a KV buffer written in place, and a variant the runtime runs behind the plain
decoder's contract, chosen by quantize's measurement like any other int8 scheme."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pixdeploy.export.fused_decoder import build, quantize_weights, unsupported
from pixdeploy.runtime import Bundle, Pipeline
from pixdeploy.runtime.backends import FusedDecoderRunner, OnnxRuntimeRunner

from pixdeploy.cli import main
from pixdeploy.config import preset
from pixdeploy.errors import PixdeployError


@pytest.fixture(scope="module")
def head32(tmp_path_factory, decisive_state):
    """A tiny model with head size 32 (3 heads of dim 96; one KV head: grouped-query), decisive like a trained
    model (its head scores four word tokens far apart), as a checkpoint and a bundle."""
    from pixdeploy.export.bundle import export_bundle

    from pixdeploy.checkpoint import save_checkpoint
    from pixdeploy.model import PixTokenLM
    from pixdeploy.tokenizer import Tokenizer

    tok = Tokenizer.train([str(n) for n in range(100)] + ["the number", "a photo of"], 300)
    cfg = preset("tiny").replace(text_vocab=tok.vocab_size, n_heads=3, n_kv_heads=1)
    torch.manual_seed(1)
    model = PixTokenLM(cfg).eval()
    model.load_state_dict(decisive_state(model.state_dict()))
    root = tmp_path_factory.mktemp("head32")
    save_checkpoint(root / "ckpt", model.state_dict(), cfg, tok, step=0)
    export_bundle(root / "ckpt", root / "bundle", echo=lambda *_: None)
    return model, root


def _steps(runner, bundle, embeds, batch, first):
    """Prefill ``first`` positions, then one step per remaining position; logits of every call."""
    cache = {p.past: np.zeros([batch if isinstance(d, str) else d for d in p.shape], np.float32)
             for p in bundle.cache_pairs()}
    out, logits = None, []
    for start, stop in [(0, first)] + [(t, t + 1) for t in range(first, embeds.shape[1])]:
        feed = {"embeds": embeds[:, start:stop], "input_pos": np.arange(start, stop, dtype=np.int64), **cache}
        out = runner.infer(feed)
        logits.append(out["logits"])
        cache = {p.past: out[p.present] for p in bundle.cache_pairs()}
    return logits, cache


def test_fused_fp32_answers_as_pytorch_and_writes_its_buffer_in_place(head32, tmp_path):
    import onnx
    import onnxruntime as ort

    model, root = head32
    bundle = Bundle(root / "bundle")
    onnx.save(build(model), str(tmp_path / "fused.onnx"))
    fused = FusedDecoderRunner.open_in(bundle, tmp_path / "fused.onnx")
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((2, 20, bundle.config.dim)).astype(np.float32)
    got, cache = _steps(fused, bundle, embeds, 2, 12)
    with torch.no_grad():
        kv = model.empty_cache(2)
        h, kv = model.decode(torch.from_numpy(embeds[:, :12]), kv, torch.arange(12))
        want = [model.logits(h[:, -1]).numpy()]
        for t in range(12, 20):
            h, kv = model.decode(torch.from_numpy(embeds[:, t:t + 1]), kv, torch.tensor([t]))
            want.append(model.logits(h[:, -1]).numpy())
    for a, b in zip(got, want):
        assert np.abs(a - b).max() < 1e-4 and (a.argmax(-1) == b.argmax(-1)).all()
    value = cache["past_k_0"]
    assert isinstance(value, ort.OrtValue)
    keys = value.numpy()
    assert np.abs(keys[:, :, :20]).sum() > 0 and not keys[:, :, 20:].any()  # written where the tokens are
    # the same buffer serves as past and present: the last step's output is the object fed in
    out = fused.infer({"embeds": embeds[:, :1], "input_pos": np.array([20]), **cache})
    assert out["present_k_0"] is value
    with pytest.raises(PixdeployError, match="consecutive positions"):
        fused.infer({"embeds": embeds[:, :2], "input_pos": np.array([21, 23]), **cache})


def test_weight_only_int8_and_int4_stay_close_and_agree(head32, tmp_path):
    import onnx

    model, root = head32
    bundle = Bundle(root / "bundle")
    fp = build(model)
    rng = np.random.default_rng(1)
    embeds = rng.standard_normal((1, 16, bundle.config.dim)).astype(np.float32)
    results = {}
    for bits in (None, 8, 4):
        proto = fp if bits is None else quantize_weights(fp, bits)
        if bits:
            ops = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
            assert len(ops) == 4 * bundle.config.n_layers + 1  # qkv, o, gate_up, down per layer + the head
            assert {a.i for n in ops for a in n.attribute if a.name == "bits"} == {bits}
            assert {a.i for n in ops for a in n.attribute if a.name == "accuracy_level"} == {4}
        onnx.save(proto, str(tmp_path / f"{bits}.onnx"))
        runner = FusedDecoderRunner.open_in(bundle, tmp_path / f"{bits}.onnx")
        results[bits] = np.concatenate(_steps(runner, bundle, embeds, 1, 8)[0])
    for bits, cos_min in ((8, 0.99), (4, 0.9)):  # int4 costs more: the parity gate decides whether it is kept
        a, b = results[bits], results[None]
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() > cos_min and (a.argmax(-1) == b.argmax(-1)).all(), (bits, cos)
    assert np.abs(results[8] - results[None]).max() < np.abs(results[4] - results[None]).max()  # int4 is coarser


def test_a_plain_graph_is_not_taken_for_a_fused_one(head32):
    _, root = head32
    bundle = Bundle(root / "bundle")
    with pytest.raises(PixdeployError, match="is not the fused decoder of this bundle's config"):
        FusedDecoderRunner.open_in(bundle, bundle.graph_path("decoder"))
    assert unsupported(preset("tiny")) and unsupported(bundle.config) is None


@pytest.fixture(scope="module")
def fused_variant(head32, tmp_path_factory):
    """int8-cpu of the head-32 bundle, with the fused int4 decoder made to win the measurement."""
    from pixdeploy.export.quantize import quantize_bundle

    _, root = head32
    path = tmp_path_factory.mktemp("fused") / "b"
    shutil.copytree(root / "bundle", path)

    def measure(bundle, candidates, images):
        assert {"fused-int8", "fused-int4"} <= set(candidates)  # offered, and made from the model
        return {n: {"encoder": {"p50": 1.0, "p90": 1.0, "p99": 1.0},
                    "decoder_step": {"p50": 3.0 if n == "fused-int4" else 1.0, "p90": 1.0, "p99": 1.0},
                    "score": 3.0 if n == "fused-int4" else 1.0} for n in candidates}

    lines = []
    _, result = quantize_bundle(path, "int8", "cpu", steps=1, echo=lines.append, measure=measure)
    assert result, result.table()
    return path, lines


def test_quantize_times_the_fused_candidates_for_real(head32, photo, tmp_path):
    """The measurement quantize runs (not a rigged one) opens and times a fused candidate beside fp32."""
    from pixdeploy.export.cpu_schemes import CPU_SCHEMES, measure_cpu_schemes
    from pixdeploy.runtime.bundle import GRAPHS

    model, root = head32
    bundle = Bundle(root / "bundle")
    CPU_SCHEMES["fused-int4"].make(bundle, tmp_path, None, model)
    ratios = measure_cpu_schemes(bundle, {"fused-int4": {g: tmp_path / f"{g}.onnx" for g in GRAPHS}}, [photo],
                                 rounds=2)
    r = ratios["fused-int4"]
    assert all(r[st][q] > 0 for st in ("encoder", "decoder_step") for q in ("p50", "p90", "p99")) and r["score"] > 0


def test_quantize_keeps_a_fused_scheme_and_records_its_form(fused_variant):
    path, lines = fused_variant
    b = Bundle(path)
    assert b.cpu_scheme("int8-cpu").scheme == "fused-int4"
    assert b.decoder_form("int8-cpu") == "fused-gqa-v1" and b.decoder_form("fp32") is None
    assert "MatMulNBits int4" in b.variant("int8-cpu").method
    assert any("fused-int8, fused-int4" in line for line in lines)


def test_the_runtime_runs_a_fused_variant_through_every_command(fused_variant, photo, tmp_path):
    path, _ = fused_variant
    photo.save(tmp_path / "p.png")
    with Pipeline.load(path, device="cpu", variant="int8-cpu") as pipe:
        assert isinstance(pipe.decoder, FusedDecoderRunner)
        fused = pipe.generate(photo, max_new_tokens=6)
    with Pipeline.load(path, device="cpu") as pipe:
        assert isinstance(pipe.decoder, OnnxRuntimeRunner)
        plain = pipe.generate(photo, max_new_tokens=6)
    assert fused.split()[:1] == plain.split()[:1]  # the decisive model's first answer survives int4
    res = CliRunner().invoke(main, ["generate", str(path), str(tmp_path / "p.png"), "--variant", "int8-cpu",
                                    "--max-new-tokens", "4", "--stream"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["bench", str(path), "--variant", "int8-cpu", "--stage", "decode", "--batch", "1",
                                    "--iters", "5", "--warmup", "1", "--contexts", "32",
                                    "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["rows"]
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0 and "fused-int4" in res.output


def test_other_backends_refuse_a_fused_variant_in_one_line(fused_variant, tmp_path, photo):
    path, _ = fused_variant
    photo.save(tmp_path / "p.png")
    for backend in ("openvino", "tensorrt"):
        res = CliRunner().invoke(main, ["generate", str(path), str(tmp_path / "p.png"), "--variant", "int8-cpu",
                                        "--backend", backend])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert "fused CPU operators; run it with --backend onnxruntime" in res.output
    res = CliRunner().invoke(main, ["triton", str(path), "-o", str(tmp_path / "repo"), "--variant", "int8-cpu"])
    assert res.exit_code == 1 and "which a Triton repository does not serve" in res.output
    assert not (tmp_path / "repo").exists()


def test_an_unknown_decoder_form_is_refused(fused_variant, tmp_path):
    from pixdeploy.runtime.bundle import BundleError

    path, _ = fused_variant
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"]["int8-cpu"]["decoder_form"] = "fused-\x1b]0;x\x07v9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"decoder form .*\\x1b.*this pixdeploy knows fused-gqa-v1"):
        Pipeline.load(copy, device="cpu", variant="int8-cpu")
