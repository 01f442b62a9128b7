"""What a training run is asked to do: its hyper-parameters (`TrainConfig`), how it runs (`RunOptions`), the
learning-rate schedule and the autocast precision."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pixdeploy.errors import PixdeployError
from pixdeploy.model import PixTokenLM


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 6e-4  # the paper's AdamW peak
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 200
    log_every: int = 10
    seed: int = 1337
    num_workers: int = 2
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    vocab_size: int = 1024  # BPE size when the data has text
    eval_percent: int = 5  # hold-out share when no separate eval data is given
    word_loss_weight: float = 1.0  # 1 is the paper's loss; see model.split_losses


@dataclass(frozen=True)
class RunOptions:
    """How `train` reads its data and talks to its caller; none of it changes what the model learns.

    ``on_step(step)`` is called after every optimizer step (tests use it to interrupt a run); ``echo`` receives
    what the user should know before training starts (how the data was read, temporaries removed);
    ``model_factory(cfg)`` builds the model: a `PixTokenLM` subclass with another image encoder trains through
    the same loop."""

    resume: bool = False  # continue the run whose checkpoint is in the run folder
    eval_data: str | Path | None = None  # held-out data; None: TrainConfig.eval_percent of the training data
    image_root: str | Path | None = None  # where mixed-text image paths start
    data_kind: str = "auto"  # "auto", "images" or "mixed": how to read a data folder
    allow_outside_root: bool = False  # read mixed-text image paths that leave the image root
    progress: bool = True  # a progress bar on rank 0
    on_step: Callable[[int], None] | None = None
    echo: Callable[[str], None] | None = None
    model_factory: Callable = PixTokenLM


def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device):
    if name not in ("auto", *PRECISIONS):
        raise PixdeployError(f"unknown precision {name!r}; choose auto, fp32, bf16 or fp16")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name != "fp32" and device.type != "cuda":
        raise PixdeployError(f"precision {name} needs a CUDA device; use fp32 on CPU")
    return PRECISIONS[name]
