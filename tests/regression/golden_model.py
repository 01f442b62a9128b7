"""The fixed-seed tiny model, the fixed real images and the stored goldens of the parity regression suite.

Goldens change only through the regeneration command (after a change meant to alter the answers):

    python tests/regression/golden_model.py [fp32 fp16 int8-cpu]

which exports the model afresh, runs the bundle and overwrites `goldens/<variant>.npz` (numpy arrays,
no pickle) and `goldens/<variant>.json` (what produced them, the CPU's instruction-set class among it).
A variant whose numbers depend on that class (`PER_CPU_CLASS`: int8 kernels saturate on AVX2 and sum
exactly with VNNI) has one golden per class, `goldens/<variant>.<class>.npz`; regenerating it writes (or
adds) the golden of the class of the machine it runs on (`pixdeploy.cpu.cpu_class`).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

GOLDENS = Path(__file__).resolve().parent / "goldens"
REGENERATE = "python tests/regression/golden_model.py"
STEPS = 12  # greedy tokens compared per image
SEED = 1234


def make_checkpoint(out: Path) -> Path:
    """A seeded tiny model with a real BPE tokenizer (weights from torch's CPU generator: the same on every
    machine for one torch version)."""
    import torch

    from pixdeploy.checkpoint import save_checkpoint
    from pixdeploy.config import preset
    from pixdeploy.model import PixTokenLM
    from pixdeploy.tokenizer import Tokenizer

    tok = Tokenizer.train([str(n) for n in range(100)] + ["the number", "a photo of"], 300)
    cfg = preset("tiny").replace(text_vocab=tok.vocab_size)
    torch.manual_seed(SEED)
    model = PixTokenLM(cfg)
    save_checkpoint(out, model.state_dict(), cfg, tok, step=0)
    return out


def golden_images() -> list:
    """Two real photos (wide: letterboxed) and two real handwritten digits, from scikit-learn."""
    from pixdeploy.sample_images import sample_images

    images = sample_images()
    return [images[0], images[1], images[2], images[5]]


def answers(pipe) -> dict[str, np.ndarray]:
    """What a bundle answers on the golden images: embeddings, prefill logits, greedy tokens."""
    from pixdeploy.runtime.sampling import Sampling

    rgb, sizes = pipe.preprocess(golden_images())
    emb = pipe.embed_letterboxed(rgb, sizes)
    ids = pipe.prompt_ids()
    logits, _ = pipe.prefill(emb, ids)
    tokens = np.stack(list(pipe.decode_steps(emb, ids, Sampling(max_new_tokens=STEPS, stop=None))), 1)
    return {"embeddings": emb, "prefill_logits": logits, "greedy_tokens": tokens}


# Variants with one golden per CPU instruction-set class.
PER_CPU_CLASS = ("int8-cpu",)


def golden_stem(variant: str, cpu_class: str | None = None) -> str:
    """The golden's file name without suffix: ``<variant>``, or ``<variant>.<class>`` (this CPU's class
    unless ``cpu_class`` is given) for a variant in ``PER_CPU_CLASS``."""
    if variant not in PER_CPU_CLASS:
        return variant
    if cpu_class is None:
        from pixdeploy.cpu import cpu_class as this_class

        cpu_class = this_class()
    return f"{variant}.{cpu_class}"


def recorded_classes(variant: str) -> list[str]:
    """The CPU classes that have a golden of ``variant``."""
    return sorted(p.name[len(variant) + 1 : -len(".npz")] for p in GOLDENS.glob(f"{variant}.*.npz"))


def load(variant: str, cpu_class: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    stem = golden_stem(variant, cpu_class)
    with np.load(GOLDENS / f"{stem}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((GOLDENS / f"{stem}.json").read_text())


# The variants besides fp32 that have goldens, made by `pixdeploy quantize`'s own graph makers.
QUANTIZED = ("fp16", "int8-cpu")


def variant_pipeline(bundle_path: Path, name: str, checkpoint: Path):
    """The bundle's graphs in variant ``name``, made as `pixdeploy quantize` makes them but without its
    parity gate: a seeded, untrained model's greedy choices include near-ties that fp16 or int8 rounding
    flips, which the gate rightly refuses; the goldens hold the graphs' numbers, not their answers."""
    from pixdeploy.export.profiles import get_profile
    from pixdeploy.export.quantize import VARIANTS, make_fp16, make_int8
    from pixdeploy.runtime import Bundle
    from pixdeploy.runtime.bundle import GRAPHS, VARIANTS_DIR, StagedVariant
    from pixdeploy.runtime.pipeline import Pipeline

    from pixdeploy.checkpoint import Checkpoint

    bundle = Bundle(bundle_path)
    folder = bundle.path / VARIANTS_DIR / f"{name}-golden"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        if name == "fp16":
            make_fp16(Checkpoint(checkpoint).load_model(), folder, get_profile(bundle.export_target))
        else:
            make_int8(bundle, VARIANTS[("int8", "cpu")], folder, None)
    entry = {"precision": name.split("-")[0], "target": "any" if name == "fp16" else "cpu",
             "graphs": {g: {"file": f"{g}.onnx"} for g in GRAPHS}}
    staged = StagedVariant(bundle, name, folder, folder).view(entry)
    return Pipeline.open(staged, device="cpu", variant=name)


def golden_pipeline(bundle_path: Path, checkpoint: Path, variant: str):
    from pixdeploy.runtime.bench import load_pipeline

    if variant in QUANTIZED:
        return variant_pipeline(bundle_path, variant, checkpoint)
    return load_pipeline(bundle_path, variant, "onnxruntime", "cpu")


def regenerate(variant: str = "fp32") -> None:
    from pixdeploy.export.bundle import export_bundle
    from pixdeploy.runtime.bench import library_versions, machine

    from pixdeploy.cpu import cpu_class

    with tempfile.TemporaryDirectory() as d:
        ck = make_checkpoint(Path(d) / "ckpt")
        bundle, _ = export_bundle(ck, Path(d) / "bundle", echo=lambda *_: None)
        got = answers(golden_pipeline(bundle.path, ck, variant))
    GOLDENS.mkdir(exist_ok=True)
    stem = golden_stem(variant)
    with open(GOLDENS / f"{stem}.npz", "wb") as f:
        np.savez(f, **got)
    meta = {"variant": variant, "regenerate": REGENERATE, "machine": machine()["cpu"], "cpu_class": cpu_class(),
            "libraries": library_versions(), "steps": STEPS, "seed": SEED}
    (GOLDENS / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {GOLDENS / stem}.npz and .json")


if __name__ == "__main__":
    for v in sys.argv[1:] or ["fp32", *QUANTIZED]:
        regenerate(v)


def rescaled_int8_pipeline(bundle_path: Path, checkpoint: Path, factor: float, name: str):
    """The int8-cpu graphs of ``golden_pipeline`` with every weight scale multiplied by ``factor``: the
    integers stay, the dequantized weights come out ``factor`` times too large, as from a changed scale rule
    (``0.5``: int8 weights given the scale of the uint8 range, max|w| / 255 instead of / 127.5)."""
    import onnx
    from onnx import numpy_helper
    from pixdeploy.runtime import Bundle
    from pixdeploy.runtime.bundle import GRAPHS, VARIANTS_DIR, StagedVariant
    from pixdeploy.runtime.pipeline import Pipeline

    golden_pipeline(bundle_path, checkpoint, "int8-cpu")  # makes the int8 graphs once
    bundle = Bundle(bundle_path)
    source, folder = bundle.path / VARIANTS_DIR / "int8-cpu-golden", bundle.path / VARIANTS_DIR / name
    folder.mkdir(parents=True)
    for g in GRAPHS:
        proto = onnx.load(str(source / f"{g}.onnx"))
        weight_scales = {n.input[3].replace("_zero_point", "_scale") for n in proto.graph.node
                         if n.op_type == "MatMulInteger"}
        found = [t for t in proto.graph.initializer if t.name in weight_scales]
        assert len(found) == len(weight_scales) > 0, f"{g}: weight scales not found"
        for t in found:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
        onnx.save(proto, str(folder / f"{g}.onnx"))
    entry = {"precision": "int8", "target": "cpu", "graphs": {g: {"file": f"{g}.onnx"} for g in GRAPHS}}
    return Pipeline.open(StagedVariant(bundle, name, folder, folder).view(entry), device="cpu", variant=name)
