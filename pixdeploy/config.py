"""Model configuration: one dataclass, named presets, validation with one clear message."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pixdeploy.errors import ConfigError

# Word-token ids fixed by the paper's tokenizer; the tokenizer module enforces them.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|image|>", "<|/image|>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IMAGE_START_ID, IMAGE_END_ID = range(6)
IMAGE_SLOT = -1  # marks a window-summary position in a token sequence; never a real token id
IGNORE = -100  # target value skipped by the loss


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 768  # width of pixel tokens, window summaries and word tokens alike
    n_heads: int = 12
    n_kv_heads: int = 6  # grouped-query attention: each KV head serves n_heads // n_kv_heads queries
    n_layers: int = 12  # decoder blocks over words + window summaries
    image_layers: int = 5  # blocks with causal attention inside each pixel window
    mlp_hidden: int = 2304  # SwiGLU hidden width (3 * dim in the paper)
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_llama31_scaling: bool = True  # LLaMA-3.1 low/high frequency scaling of RoPE
    fold: int = 16  # colour folding factor: each 8-bit channel is divided by it
    image_size: int = 224  # letterbox side, in pixels
    window: int = 16  # side of the local attention windows, in pixels
    max_seq_len: int = 1024  # decoder context: words + window summaries
    text_vocab: int = len(SPECIAL_TOKENS)  # set from the tokenizer; 6 means image-only

    # Derived quantities: one place each.
    @property
    def levels(self) -> int:
        return 256 // self.fold

    @property
    def n_colors(self) -> int:
        return self.levels**3

    @property
    def pixel_pad_id(self) -> int:
        return self.n_colors

    @property
    def windows_per_side(self) -> int:
        return self.image_size // self.window

    @property
    def n_windows(self) -> int:
        return self.windows_per_side**2

    @property
    def window_tokens(self) -> int:
        return self.window * self.window

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def vocab_out(self) -> int:
        """Unified output head: word tokens first, then colour tokens."""
        return self.text_vocab + self.n_colors

    def estimated_bytes(self) -> int:
        """fp32 weights plus one sequence's KV cache: what loading the model and running it once allocates."""
        kv = self.n_kv_heads * self.head_dim
        block = 2 * self.dim * self.dim + 2 * self.dim * kv + 3 * self.dim * self.mlp_hidden
        weights = ((self.n_colors + 1) * self.dim + self.text_vocab * self.dim + self.dim * self.vocab_out
                   + (self.n_layers + self.image_layers) * block)
        cache = 2 * self.n_layers * kv * self.max_seq_len
        return 4 * (weights + cache)

    def inference_bytes_per_image(self) -> int:
        """Working memory each image of a batch takes when the graphs run, estimated before anything is allocated:
        the image encoder's pixel activations (a few live tensors of image_size**2 x dim floats) and window
        attention scores (window**2 per pixel and head), one sequence's KV cache three times over (past, present,
        a copy) and its logits. Measured at `tiny` on onnxruntime CPU: 5-7 MiB an image; this gives 7.3 MiB."""
        pixels = self.image_size**2
        encoder = pixels * (8 * self.dim + 4 * self.window**2 * self.n_heads)
        cache = 3 * 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.max_seq_len
        return 4 * (encoder + cache + self.vocab_out)

    def validate(self) -> ModelConfig:
        problems = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                problems.append(f"{field.name} must be a positive integer, got {value!r}")
            if field.type in ("float", float) and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                                   or not math.isfinite(value)):
                problems.append(f"{field.name} must be a finite number, got {value!r}")
            if field.type in ("bool", bool) and not isinstance(value, bool):
                problems.append(f"{field.name} must be true or false, got {value!r}")
        problems += [f"{name} must be at most {limit}, got {getattr(self, name)}" for name, limit in LIMITS.items()
                     if isinstance(getattr(self, name), int) and getattr(self, name) > limit]
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))
        if self.estimated_bytes() > MAX_MODEL_BYTES:
            raise ConfigError(f"invalid model config: its weights and one sequence's KV cache need "
                              f"{self.estimated_bytes() / 2**30:.0f} GiB; at most {MAX_MODEL_BYTES >> 30} GiB is "
                              "supported")
        if self.fold & (self.fold - 1) or not 1 <= self.fold <= 256:
            problems.append(f"fold must be a power of two in 1..256, got {self.fold}")
        elif self.fold == 1:
            # 256**3 colours: the padding id 2**24 is past the integers float32 holds exactly, and a
            # 16.7M-row embedding table is not a model anyone deploys.
            problems.append("fold 1 is unsupported: the padding token id 2**24 does not fit the pixel-id range")
        if self.image_size % self.window:
            problems.append(f"window {self.window} does not divide image_size {self.image_size}")
        if self.dim % self.n_heads:
            problems.append(f"n_heads {self.n_heads} does not divide dim {self.dim}")
        elif self.head_dim % 2:
            problems.append(f"head dim {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.text_vocab < len(SPECIAL_TOKENS):
            problems.append(f"text_vocab {self.text_vocab} is smaller than the {len(SPECIAL_TOKENS)} special tokens")
        if not self.image_size % self.window and self.max_seq_len < self.n_windows + 4:
            problems.append(
                f"max_seq_len {self.max_seq_len} cannot hold one image ({self.n_windows} windows + 4 tokens)"
            )
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            problems.append("norm_eps and rope_theta must be positive")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))
        return self

    def replace(self, **changes) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError("model config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**data).validate()


# Documented ranges, checked before anything is allocated: a config read from a checkpoint or bundle is untrusted,
# and a size past these is a damaged or hostile file, not a model (the paper's model is 768 / 12 / 1024).
# image_size 4096: the exported graphs count pixel positions in float32, exact up to 2**24 = 4096**2.
LIMITS = {"dim": 16384, "n_heads": 256, "n_kv_heads": 256, "n_layers": 512, "image_layers": 256,
          "mlp_hidden": 131072, "image_size": 4096, "window": 512, "max_seq_len": 1 << 20,
          "text_vocab": 1 << 21}
MAX_MODEL_BYTES = 64 << 30  # fp32 weights + one sequence's KV cache


PRESETS: dict[str, ModelConfig] = {
    # Trains on 2 CPU cores in minutes: 32x32 images, 16 windows of 8x8, 64 colours.
    "tiny": ModelConfig(
        dim=96, n_heads=4, n_kv_heads=2, n_layers=2, image_layers=2, mlp_hidden=256,
        fold=64, image_size=32, window=8, max_seq_len=64, rope_theta=10000.0, rope_llama31_scaling=False,
    ),
    # A laptop-GPU model: 64x64 images, 16 windows of 16x16, 512 colours.
    "small": ModelConfig(
        dim=256, n_heads=8, n_kv_heads=4, n_layers=4, image_layers=3, mlp_hidden=768,
        fold=32, image_size=64, window=16, max_seq_len=128, rope_theta=10000.0, rope_llama31_scaling=False,
    ),
    # The paper's configuration (arXiv 2605.14028), about 120M parameters.
    "paper-120m": ModelConfig(),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
