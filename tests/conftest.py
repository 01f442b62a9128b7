import numpy as np
import pytest
from PIL import Image

from pixdeploy.config import preset


@pytest.fixture
def tiny_cfg():
    return preset("tiny")


@pytest.fixture
def photo():
    """A real photograph shipped with scikit-learn (not drawn by this project)."""
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0])


@pytest.fixture
def digit_images():
    """Real handwritten digits (scikit-learn's 8x8 set), upscaled to RGB images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [(d.images[i] * (255 / 16)).astype(np.uint8) for i in range(40)]
    return [Image.fromarray(a, "L").resize((24, 24), Image.NEAREST).convert("RGB") for a in imgs], d.target[:40]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A seeded tiny model with a real BPE tokenizer, saved as a checkpoint."""
    import torch

    from pixdeploy.checkpoint import save_checkpoint
    from pixdeploy.model import PixTokenLM
    from pixdeploy.tokenizer import Tokenizer

    tok = Tokenizer.train([str(n) for n in range(100)] + ["the number", "a photo of"], 300)
    cfg = preset("tiny").replace(text_vocab=tok.vocab_size)
    torch.manual_seed(0)
    model = PixTokenLM(cfg)
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(out, model.state_dict(), cfg, tok, step=0)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    from pixdeploy.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    bundle, result = export_bundle(tiny_checkpoint, out, echo=lambda *_: None)
    return bundle.path


def write_test_engine_set(bundle_path, *, gpu: str, tensorrt: str, cc: str, variant: str = "fp32", max_batch: int = 4,
                          version_compatible: bool = False, plugins: tuple = ()) -> str:
    """An engine set as `build-engine` records it, with headers written here: real pixdeploy engine files whose
    plan bytes are a marker, not a TensorRT plan (no TensorRT here). Selection, checksums, Triton configs and
    every refusal before TensorRT deserializes read exactly these."""
    from pathlib import Path

    from pixdeploy.export.engine import derive_profiles
    from pixdeploy.runtime.bundle import ENGINES_DIR, GRAPHS, Bundle, EngineSet, add_engine_set, engine_set_name
    from pixdeploy.runtime.engine_header import gpu_slug, write_engine

    from pixdeploy.files import sha256

    b = Bundle(bundle_path)
    name = engine_set_name(gpu_slug(gpu), tensorrt, variant)
    folder = Path(bundle_path) / ENGINES_DIR / name
    folder.mkdir(parents=True)
    record = EngineSet(name, variant, tensorrt, gpu, cc, b.export_target, max_batch,
                       version_compatible, tuple(plugins), {g: f"{ENGINES_DIR}/{name}/{g}.engine" for g in GRAPHS})
    for g in GRAPHS:
        profiles = derive_profiles(g, b.graphs[g], b.config, max_batch)
        header = {"tensorrt": tensorrt, "gpu": gpu, "compute_capability": cc, "graph": g, "variant": variant,
                  "precision": b.variant(variant).precision, "profiles": [p.to_dict() for p in profiles],
                  "max_batch": max_batch, "source_sha256": sha256(b.graph_path(g, variant)), "producer": "test",
                  "version_compatible": version_compatible, "plugins": list(plugins), "plugin_layers": []}
        write_engine(folder / f"{g}.engine", header, f"plan of {g} {variant} for {gpu} {tensorrt}".encode())
    add_engine_set(bundle_path, record, folder)
    return name


@pytest.fixture
def engine_set_writer():
    return write_test_engine_set


TENSORRT_TARGETS = ("tensorrt-10.3", "tensorrt-10.15")


def decisive(state: dict) -> dict:
    """A model state whose output head scores four word tokens far apart, as a trained model's answers are
    decisive: quantization noise then does not flip greedy answers that hinge on near-ties (which differ between
    CPUs)."""
    import torch

    head = torch.zeros_like(state["head.weight"])
    keep = [2, 10, 20, 30]
    head[keep] = state["head.weight"][keep] * 50
    return {**state, "head.weight": head}


@pytest.fixture(scope="session")
def decisive_state():
    return decisive


@pytest.fixture(scope="session")
def tensorrt_bundles(tiny_checkpoint, tmp_path_factory):
    """Both TensorRT export targets, each with every TensorRT-bound variant (fp32, fp16, int8-tensorrt), made by
    the real export and quantize (so each variant passed its parity gate on onnxruntime). The model answers
    decisively (its head scores four word tokens far apart, like a trained model's), so int8's greedy answers
    do not hinge on near-ties that differ between CPUs."""
    from pixdeploy.export.bundle import export_bundle
    from pixdeploy.export.quantize import quantize_bundle

    from pixdeploy.checkpoint import Checkpoint, save_checkpoint

    ck = Checkpoint(tiny_checkpoint)
    state = decisive(ck.model_state())
    root = tmp_path_factory.mktemp("tensorrt-bundles")
    save_checkpoint(root / "ckpt", state, ck.config, ck.tokenizer, step=0)
    quiet = lambda *_: None  # noqa: E731
    out = {}
    for target in TENSORRT_TARGETS:
        bundle, _ = export_bundle(root / "ckpt", root / target, echo=quiet, target=target)
        for precision in ("fp16", "int8"):
            quantize_bundle(bundle.path, precision, "tensorrt", steps=1, echo=quiet)
        out[target] = bundle.path
    return out
