"""Train the pixel model and the patch-ViT baseline on the same reading data, then read the held-out set.

Both models go through `pixdeploy.training.train` with one `TrainConfig` (same steps, batches, optimizer,
schedule and seed) and one decoder config; only ``model_factory`` differs. Reading is greedy decoding
through `pixdeploy.generation.generate_text`, the project's reference generation.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.reading import cost, score, task
from benchmarks.reading.vit import PatchViTLM
from pixdeploy.config import ModelConfig
from pixdeploy.model import PixTokenLM
from pixdeploy.training import TrainConfig

# The names double as the encoder kinds of `cost.encoder_flops_formula`.
MODELS: dict[str, Callable[[ModelConfig], PixTokenLM]] = {"pixel": PixTokenLM, "vit": PatchViTLM}


@dataclass(frozen=True)
class Plan:
    """One scale of the benchmark: data, model and training sizes."""

    task: task.TaskConfig
    model: ModelConfig
    n_train: int
    n_heldout: int
    steps: int
    batch_size: int
    lr: float
    warmup: int
    read_batch: int = 64
    num_workers: int = 1
    # Each word target counts as this many pixel targets in the loss (`model.split_losses`): at 1 (the
    # paper's loss) a 32x32 image's 1,024 pixel targets leave its ~4 word targets 0.4% of the loss. The
    # cpu plan's 60 gives them about a fifth; the gpu plan's 250 about 8% of a 128x128 image's.
    word_loss_weight: float = 1.0


# The decoder needs only bytes to spell any string it reads: a byte-level tokenizer with no merges
# (6 special tokens + 256 bytes) makes held-out strings, which no training caption contains, spellable.
BYTE_VOCAB = 262

PLANS: dict[str, Plan] = {
    # Seconds: the machinery end to end (CI). Reads nothing meaningful.
    "smoke": Plan(
        task=task.TaskConfig(image_size=32, font_sizes=(6, 10)),
        model=ModelConfig(dim=32, n_heads=2, n_kv_heads=1, n_layers=2, image_layers=2, mlp_hidden=192, fold=64,
                          image_size=32, window=8, max_seq_len=32, rope_theta=10000.0, rope_llama31_scaling=False),
        n_train=64, n_heldout=16, steps=3, batch_size=8, lr=1e-3, warmup=1, read_batch=16, num_workers=0,
    ),
    # 2 CPU cores, under 40 minutes for both models on the slower machines (benchmarks/reading/README.md
    # says why this is an easier task than the gpu plan's: at this budget neither model learns that one).
    "cpu": Plan(
        task=task.TaskConfig(image_size=32, font_sizes=(6, 8, 10, 12, 14), word_share=0.0, digits=(3, 3),
                             placement="centred", paper=True, fonts=1, photo_share=0.25),
        model=ModelConfig(dim=48, n_heads=2, n_kv_heads=1, n_layers=4, image_layers=2, mlp_hidden=144, fold=64,
                          image_size=32, window=8, max_seq_len=96, rope_theta=10000.0, rope_llama31_scaling=False),
        n_train=57600, n_heldout=400, steps=3600, batch_size=16, lr=1e-3, warmup=100, word_loss_weight=60.0,
    ),
    # A GPU: larger images, the paper's 16-pixel windows, wider models, more data and steps.
    "gpu": Plan(
        task=task.TaskConfig(image_size=128, font_sizes=(5, 6, 7, 8, 10, 12, 14)),
        model=ModelConfig(dim=384, n_heads=6, n_kv_heads=3, n_layers=6, image_layers=3, mlp_hidden=1152, fold=32,
                          image_size=128, window=16, max_seq_len=96, rope_theta=10000.0, rope_llama31_scaling=False),
        n_train=200000, n_heldout=2800, steps=20000, batch_size=64, lr=6e-4, warmup=500, read_batch=256,
        num_workers=4, word_loss_weight=250.0,
    ),
}


def train_config(plan: Plan, seed: int) -> TrainConfig:
    return TrainConfig(steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr, warmup=plan.warmup,
                       eval_every=plan.steps, eval_batches=4, ckpt_every=plan.steps,
                       log_every=max(1, plan.steps // 50), seed=seed, num_workers=plan.num_workers,
                       vocab_size=BYTE_VOCAB, word_loss_weight=plan.word_loss_weight)


def make_data(root: Path, plan: Plan, seed: int, progress: bool) -> dict:
    """Render both splits under ``root``; returns their text files and the fonts used."""
    tc = task.TaskConfig(**{**asdict(plan.task), "seed": seed})
    fonts = task.available_fonts()[: plan.task.fonts or None]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.n_train + plan.n_heldout, desc="render", unit="img", dynamic_ncols=True)
    tick = bar.update if bar is not None else None
    train_txt = task.write_split(root, "train", plan.n_train, tc, fonts, tick)
    heldout_txt = task.write_split(root, "heldout", plan.n_heldout, tc, fonts, tick)
    if bar is not None:
        bar.close()
    return {"train": train_txt, "heldout": heldout_txt, "fonts": fonts, "task": tc}


@torch.no_grad()
def read_heldout(model: PixTokenLM, tokenizer, root: Path, plan: Plan) -> list[dict]:
    """Greedy readings of every held-out image, with what each image shows."""
    from pixdeploy.folding import prepare_batch
    from pixdeploy.generation import Sampling, generate_text

    model.eval()
    device = next(model.parameters()).device
    records = task.read_records(root, "heldout")
    max_new = max(len(tokenizer.encode(r["text"])) for r in records) + 2  # room to over-read, then </s>
    rows = []
    for i in range(0, len(records), plan.read_batch):
        chunk = records[i : i + plan.read_batch]
        images, sizes = prepare_batch([root / r["image"] for r in chunk], model.cfg.image_size)
        read = generate_text(model, tokenizer, torch.from_numpy(images).to(device),
                             torch.from_numpy(sizes).to(device), sampling=Sampling(max_new_tokens=max_new))
        rows += [{**r, "truth": r["text"], "read": text.strip()} for r, text in zip(chunk, read)]
    return rows


def loss_curve(metrics_path: Path) -> list[dict]:
    """Training loss per logged step, and the held-out losses the loop measured at the end."""
    curve = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        curve.append({k: rec[k] for k in ("step", "loss", "eval_pixel_loss", "eval_word_loss") if k in rec})
    return curve


def run_model(name: str, data: dict, workdir: Path, plan: Plan, seed: int, progress: bool) -> dict:
    from pixdeploy.checkpoint import Checkpoint
    from pixdeploy.training import RunOptions, train

    factory = MODELS[name]
    out = workdir / "runs" / name
    t0 = time.perf_counter()
    summary = train(data["train"], out, plan.model, train_config(plan, seed),
                    RunOptions(eval_data=data["heldout"], progress=progress, model_factory=factory))
    train_s = time.perf_counter() - t0
    ckpt = Checkpoint(out)
    model = factory(ckpt.config)
    model.load_state_dict(ckpt.model_state())
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    t1 = time.perf_counter()
    rows = read_heldout(model, ckpt.tokenizer, data["heldout"].parent, plan)
    read_s = time.perf_counter() - t1
    model.cpu()
    return {
        "params": cost.count_params(model),
        "encoder_flops_per_image": cost.encoder_flops(model, ckpt.config),
        "encoder_flops_formula": cost.encoder_flops_formula(ckpt.config, name),
        "train_seconds": train_s, "read_seconds": read_s,
        "final_train_loss": summary["loss"],
        "heldout_word_loss": summary.get("eval_word_loss"), "heldout_pixel_loss": summary.get("eval_pixel_loss"),
        "loss_curve": loss_curve(out / "metrics.jsonl"),
        "overall": score.overall(rows),
        "by_font_size": score.summarise(rows, "font_size"),
        "by_background": score.summarise(rows, "background"),
        "by_kind": score.summarise(rows, "kind"),
        "readings": [{k: r[k] for k in ("image", "truth", "read", "font", "font_size", "background")} for r in rows],
    }


def run_benchmark(plan: Plan, workdir: Path, models: list[str], seed: int, progress: bool = True,
                  echo: Callable[[str], None] = print) -> dict:
    t0 = time.perf_counter()
    data = make_data(workdir / "data", plan, seed, progress)
    echo(f"rendered {plan.n_train} training and {plan.n_heldout} held-out images; fonts: "
         + ", ".join(Path(f).stem for f in data["fonts"]))
    results = {}
    for name in models:
        echo(f"training {name} for {plan.steps} steps")
        results[name] = run_model(name, data, workdir, plan, seed, progress)
        r = results[name]
        echo(f"{name}: exact {r['overall']['exact']:.1f}%, chars {r['overall']['chars']:.1f}% "
             f"(trained in {r['train_seconds']:.0f} s)")
    train_strings = {json.loads(x)["text"] for x in (workdir / "data" / "train.jsonl").read_text().splitlines()}
    heldout_strings = {r["truth"] for r in results[models[0]]["readings"]} if models else set()
    return {
        "seed": seed,
        "plan": {**asdict(plan), "task": asdict(data["task"]), "model": plan.model.to_dict()},
        "fonts": [Path(f).stem for f in data["fonts"]],
        "photographs": len(task.photographs()),
        "strings": {"train": len(train_strings), "heldout": len(heldout_strings),
                    "shared": len(train_strings & heldout_strings)},
        "models": results,
        "wall_seconds": time.perf_counter() - t0,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
    }
