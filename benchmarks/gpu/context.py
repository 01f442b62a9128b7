"""What every stage of the GPU suite shares: the plan of a run, the context later stages take from earlier
ones (trained model, tokenizer, real images, measured peaks), and small helpers."""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

import pixdeploy.model as model_module
from pixdeploy.model import PixTokenLM, window_attention_sdpa

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NEEDS_CUDA = "needs CUDA"
PROMPT = "the number"  # a short prompt after the image, in the demo captions' words


@dataclass(frozen=True)
class Plan:
    """How much of each stage to run: a full run on a GPU, or the smoke run that keeps the suite alive."""

    preset: str
    device: torch.device
    smoke: bool
    train_steps: int
    train_batch: int
    image_batches: tuple[int, ...]
    decode_batches: tuple[int, ...]
    iters: int
    warmup: int
    matmul_n: int
    copy_bytes: int
    greedy_steps: int = 32
    parity_images: int = 16
    onnx_graphs: tuple[str, ...] = ("image_encoder", "decoder")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def make_plan(preset_name: str, device: torch.device, smoke: bool, train_steps: int | None,
              train_batch: int | None) -> Plan:
    if smoke:
        # Small enough for CI on two cores; the decoder graph's export is left to tests/export.
        plan = Plan(preset_name, device, True, train_steps=8, train_batch=4, image_batches=(1, 4),
                    decode_batches=(1, 2), iters=5, warmup=1, matmul_n=512, copy_bytes=16 << 20,
                    greedy_steps=8, parity_images=4, onnx_graphs=("image_encoder",))
    else:
        # Batch 4 at 224x224 is about 200k pixel tokens a step and fits 80 GB with bf16 activations.
        # Matmul and copy sizes far past the GPU's 50 MB L2 cache.
        cuda = device.type == "cuda"
        plan = Plan(preset_name, device, False, train_steps=300, train_batch=4, image_batches=(1, 8, 32),
                    decode_batches=(1, 8), iters=30, warmup=5, matmul_n=8192 if cuda else 1024,
                    copy_bytes=(1 << 30) if cuda else 256 << 20)
    changes = {k: v for k, v in (("train_steps", train_steps), ("train_batch", train_batch)) if v is not None}
    return Plan(**{**plan.__dict__, **changes})


@dataclass
class Context:
    """What later stages take from earlier ones: the trained model, its tokenizer, real images, peaks."""

    plan: Plan
    cfg: object = None
    tokenizer: object = None
    model: PixTokenLM | None = None  # fp32 weights, on the device
    images: np.ndarray | None = None  # real images, letterboxed (N, S, S, 3) uint8
    sizes: np.ndarray | None = None
    matmul_tflops: dict = field(default_factory=dict)  # dtype name -> measured peak
    copy_gbps: float = float("nan")

    def image_batches(self, batch: int, rotations: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``rotations`` distinct batches of real images (each a different slice of the pool)."""
        out = []
        for r in range(rotations):
            idx = (np.arange(batch) + r * max(1, batch // 2 + 1)) % len(self.images)
            out.append((torch.from_numpy(self.images[idx]).to(self.plan.device),
                        torch.from_numpy(self.sizes[idx]).to(self.plan.device)))
        return out

    def peak_for(self, dtype_name: str) -> tuple[str, float]:
        """The measured matmul peak of that dtype, else the highest measured (NaN without a peaks stage)."""
        if not self.matmul_tflops:
            return "none", float("nan")
        if dtype_name in self.matmul_tflops:
            return dtype_name, self.matmul_tflops[dtype_name]
        best = max(self.matmul_tflops, key=self.matmul_tflops.get)
        return best, self.matmul_tflops[best]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


@contextlib.contextmanager
def attention(impl: str):
    """Which window attention the model runs: "sdpa" (the reference) or "default" (the model's own
    choice: the Triton kernel at CUDA inference when Triton is installed)."""
    saved = model_module.window_attention
    if impl == "sdpa":
        model_module.window_attention = window_attention_sdpa
    try:
        yield
    finally:
        model_module.window_attention = saved


def triton_ready(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, NEEDS_CUDA + " (on CPU the kernel runs only under Triton's interpreter, in tests)"
    from pixdeploy.kernels import window_attention_triton

    return (True, "") if window_attention_triton.is_available("cuda") else (False, "triton is not installed")


def cast_weights(model: PixTokenLM, dtype: torch.dtype) -> PixTokenLM:
    """A copy with weights in ``dtype``; RoPE tables stay fp32 (as in the fp16 graphs), norms and the
    softmax compute in fp32 inside the model anyway."""
    m = copy.deepcopy(model).to(dtype)
    for name, buf in model.named_buffers():
        setattr(m, name, buf)
    return m.eval()
