"""The torch-free pipeline: bundle -> window embeddings, captions, streamed text.

    from pixdeploy.runtime import Pipeline
    pipe = Pipeline.load("bundle/", backend="onnxruntime", device="auto")
    vectors = pipe.embed(["a.jpg", "b.png"])          # (2, windows, dim) float32
    text = pipe.generate("a.jpg", prompt="", max_new_tokens=16)
    for piece in pipe.stream("a.jpg"): print(piece, end="", flush=True)

Preprocessing is the training code's own (`pixdeploy.folding`, numpy + Pillow), so pixels become the
same tokens they were in training.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from pixdeploy.runtime.backends import NP_TYPES, Runner, open_runners
from pixdeploy.runtime.bundle import DEFAULT_VARIANT, Bundle
from pixdeploy.runtime.sampling import GREEDY, Sampling, sample

from pixdeploy.config import IMAGE_SLOT
from pixdeploy.errors import ContextLimitWarning, CpuClassWarning, PixdeployError
from pixdeploy.folding import prepare_batch
from pixdeploy.sequence import collect_until_stop, image_prompt
from pixdeploy.text import printable


def warn_cpu_class(bundle: Bundle, variant: str) -> None:
    """One warning when ``variant``'s int8 scheme was measured fastest on a CPU of another instruction-set class."""
    from pixdeploy.cpu import cpu_class

    record = bundle.cpu_scheme(variant)
    here = cpu_class()
    if record is not None and record.isa != here:
        warnings.warn(CpuClassWarning(printable(
            f"variant {variant} of {bundle.path} uses the int8 scheme {record.scheme}, measured fastest on a "
            f"{record.isa} CPU; this CPU is {here}: it runs, maybe slower than another scheme would "
            f"(re-run `pixdeploy quantize --precision int8 --target cpu --force` here)")), stacklevel=3)


class Pipeline:
    """A bundle variant's two runners plus the tokenizer and word-embedding table. ``close()`` (or ``with``)
    frees the runners."""

    def __init__(self, bundle: Bundle, encoder: Runner, decoder: Runner, variant: str = DEFAULT_VARIANT):
        self.bundle, self.cfg, self.tokenizer = bundle, bundle.config, bundle.tokenizer
        self.variant = variant  # fp32, fp16, int8-tensorrt, int8-cpu: graphs of one precision
        self.encoder, self.decoder = encoder, decoder
        self.text_embeddings = bundle.text_embeddings()
        self.cache = bundle.cache_pairs()  # the decoder's KV contract, as the export recorded it

    @classmethod
    def from_runners(cls, bundle: Bundle, encoder: Runner, decoder: Runner,
                     variant: str = DEFAULT_VARIANT) -> Pipeline:
        """A pipeline over runners made elsewhere (Triton BLS calls, a recording runner for calibration)."""
        return cls(bundle, encoder, decoder, variant)

    @classmethod
    def open(cls, bundle: Bundle, backend: str = "onnxruntime", device: str = "auto",
             variant: str = DEFAULT_VARIANT, **backend_options) -> Pipeline:
        """A pipeline on a `Bundle` already read. backend_options: e.g. allow_host_code=True for
        version-compatible TensorRT engines, plugins=[...] for engines with plugin layers (explicit opt-ins)."""
        warn_cpu_class(bundle, variant)
        gate_images = backend_options.pop("gate_images", None)
        bf16 = backend == "openvino" and backend_options.get("precision") == "bf16"
        if gate_images is not None and not bf16:
            raise PixdeployError("gate images are for the bf16 gate (backend openvino, precision bf16)")
        pipe = cls(bundle, *open_runners(bundle, backend, variant, device, **backend_options), variant)
        if bf16:
            with contextlib.ExitStack() as on_error:
                on_error.callback(pipe.close)
                pipe.check_against_onnxruntime(gate_images)
                on_error.pop_all()
        return pipe

    def check_against_onnxruntime(self, gate_images=None) -> dict:
        """OpenVINO bf16's gate: this pipeline against onnxruntime on the same variant's graphs (fp32 compute)."""
        from pixdeploy.runtime.openvino_backend import check_bf16

        try:
            reference = Pipeline(self.bundle, *open_runners(self.bundle, "onnxruntime", self.variant, "cpu"),
                                 self.variant)
        except PixdeployError as e:
            raise PixdeployError(f"the bf16 gate compares with onnxruntime, which cannot run here: {e}") from None
        with reference:
            return check_bf16(self, reference, gate_images)

    @classmethod
    def load(cls, path, backend: str = "onnxruntime", device: str = "auto", variant: str = DEFAULT_VARIANT,
             **backend_options) -> Pipeline:
        return cls.open(Bundle(path), backend, device, variant, **backend_options)

    def close(self) -> None:
        for runner in (self.encoder, self.decoder):
            runner.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- images ----

    def preprocess(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Paths, Pillow images or HxWx3 uint8 arrays -> letterboxed (N, S, S, 3) uint8 + (N, 2) sizes."""
        return prepare_batch(images, self.cfg.image_size)

    def embed_letterboxed(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        S = self.cfg.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (S, S, 3):
            raise PixdeployError(f"letterboxed images must be (N, {S}, {S}, 3) uint8, got {images.dtype} "
                                 f"{images.shape}; pass files or arrays to embed() to letterbox them")
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        if len(sizes) != len(images) or (sizes < 1).any() or (sizes > S).any():
            raise PixdeployError(f"sizes must be {len(images)} (h, w) pairs within 1..{S}")
        out = self.encoder.infer({"images": images, "sizes": sizes})["window_embeddings"]
        if not np.isfinite(out).all():
            raise PixdeployError(f"the image encoder of variant {self.variant} of {self.bundle.path} produced NaN "
                                 "or infinite embeddings")
        return out

    def embed(self, images: Sequence) -> np.ndarray:
        """One embedding per pixel window: (N, windows, dim) float32."""
        return self.embed_letterboxed(*self.preprocess(images))

    # ---- decoding ----

    def prompt_ids(self, prompt: str = "") -> list[int]:
        return image_prompt(self.cfg.n_windows, self.tokenizer.encode(prompt) if prompt else ())

    def empty_cache(self, batch: int) -> dict:
        """Zeros for every cache input, of the dtype and shape the bundle records (symbolic dim: ``batch``); inputs
        are only read, so cache tensors of one dtype and shape share one array."""
        shared: dict = {}
        zeros = {}
        for pair in self.cache:
            key = (pair.dtype, tuple(batch if isinstance(d, str) else d for d in pair.shape))
            if key not in shared:
                shared[key] = np.zeros(key[1], NP_TYPES[pair.dtype])
            zeros[pair.past] = shared[key]
        return zeros

    def _step(self, embeds: np.ndarray, start: int, cache: dict) -> tuple[np.ndarray, dict]:
        pos = np.arange(start, start + embeds.shape[1], dtype=np.int64)
        out = self.decoder.infer({"embeds": embeds.astype(np.float32), "input_pos": pos, **cache})
        logits = out["logits"]
        if not np.isfinite(logits).all():
            raise PixdeployError(f"the decoder of variant {self.variant} of {self.bundle.path} produced NaN or "
                                 "infinite logits")
        return logits, {pair.past: out[pair.present] for pair in self.cache}

    def prefill(self, window_embeddings: np.ndarray, ids: list[int]) -> tuple[np.ndarray, dict]:
        """Whole prompt for N images at once -> last-position logits (N, vocab) and the cache."""
        if len(ids) >= self.cfg.max_seq_len:
            raise PixdeployError(f"prompt is {len(ids)} tokens with the image; the context holds "
                                 f"{self.cfg.max_seq_len} (shorten the prompt)")
        return self._step(self.prompt_embeds(window_embeddings, ids), 0, self.empty_cache(len(window_embeddings)))

    def prompt_embeds(self, window_embeddings: np.ndarray, ids: list[int]) -> np.ndarray:
        """The decoder's input for a prompt: word embeddings, with each image slot holding a window embedding."""
        arr = np.asarray(ids)
        embeds = np.repeat(self.text_embeddings[np.maximum(arr, 0)][None], len(window_embeddings), axis=0)
        embeds[:, arr == IMAGE_SLOT] = window_embeddings
        return embeds.astype(np.float32)

    def token_steps(self, images: Sequence, prompt: str = "", sampling: Sampling = GREEDY) -> Iterator[np.ndarray]:
        """Yield (N,) word tokens per step; stops when every sequence hit a stop token (``stop=None``: never)."""
        yield from self.decode_steps(self.embed(images), self.prompt_ids(prompt), sampling)

    def decode_steps(self, window_embeddings: np.ndarray, ids: list[int],
                     sampling: Sampling = GREEDY) -> Iterator[np.ndarray]:
        """`token_steps` from window embeddings already computed and prompt ids already built."""
        logits, cache = self.prefill(window_embeddings, ids)
        rng = np.random.default_rng(sampling.seed)
        asked = sampling.max_new_tokens
        n = min(asked, self.cfg.max_seq_len - len(ids))
        if n < asked:  # said, not silent: the caller asked for more than the context holds
            warnings.warn(ContextLimitWarning(
                f"the context holds {self.cfg.max_seq_len} tokens and the prompt takes {len(ids)}: generating "
                f"at most {n} of the {asked} new tokens asked for"), stacklevel=2)
        done = np.zeros(len(logits), dtype=bool)
        stop = list(sampling.stop or ())
        for i in range(n):
            nxt = sample(logits[:, : self.cfg.text_vocab], sampling.temperature, sampling.top_k, sampling.top_p, rng)
            yield nxt
            done |= np.isin(nxt, stop)
            if done.all() or i == n - 1:
                return
            logits, cache = self._step(self.text_embeddings[nxt][:, None], len(ids) + i, cache)

    def generate_batch(self, images: Sequence, prompt: str = "", **sampling) -> list[str]:
        """One caption per image; ``sampling``: `Sampling`'s fields (max_new_tokens, temperature, top_k, top_p,
        stop, seed)."""
        how = Sampling(**sampling)
        out = collect_until_stop(self.token_steps(images, prompt, how), len(images), how.stop)
        return [self.tokenizer.decode(o) for o in out]

    def generate(self, image, prompt: str = "", **sampling) -> str:
        return self.generate_batch([image], prompt, **sampling)[0]

    def stream(self, image, prompt: str = "", **sampling) -> Iterator[str]:
        """Yield text as it is generated (decoded incrementally, so multi-byte characters stay whole)."""
        how = Sampling(**sampling)
        stop = set(how.stop or ())
        ids: list[int] = []
        shown = ""
        for step in self.token_steps([image], prompt, how):
            t = int(step[0])
            if t in stop:
                break
            ids.append(t)
            text = self.tokenizer.decode(ids)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text[len(shown):]
                shown = text
        rest = self.tokenizer.decode(ids)[len(shown):]
        if rest:  # bytes that never completed a character, as generate() would show them
            yield rest
