"""PyTorch eager as the baseline of `pixdeploy bench`: the same stage, batch and inputs as the bundle's call.

Loads the checkpoint the bundle was exported from and runs the model's own inference path
(`encode_images`, `decode` over a fixed-size KV cache, `generation.generate`) without gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.errors import PixdeployError
from pixdeploy.generation import Sampling, generate


def eager_baseline(checkpoint, device: str = "auto") -> Callable:
    """What `pixdeploy.runtime.bench.run_bench` takes as ``baseline``: called with the bundle's config once the
    bundle is open, it loads the checkpoint (refusing another model's) as the `EagerBaseline`."""
    def make(cfg) -> EagerBaseline:
        return EagerBaseline(checkpoint, cfg, device=device)

    make.source = str(checkpoint)
    return make


class EagerBaseline:
    def __init__(self, checkpoint, cfg, device: str = "auto"):
        ck = Checkpoint(checkpoint)
        if ck.config != cfg:
            raise PixdeployError(f"checkpoint {checkpoint} has another model configuration than the bundle; "
                                 "give the checkpoint the bundle was exported from")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise PixdeployError("device cuda asked for, but this PyTorch has no CUDA device")
        self.device = torch.device(device)
        self.model = ck.load_model().to(self.device).eval()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def device_memory_mb(self) -> float | None:
        """Peak CUDA memory PyTorch allocated since the last call (None on CPU)."""
        if self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def tensor(self, a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def workload(self, case) -> Callable[[], None]:
        """The eager twin of a `pixdeploy.runtime.bench.Case`; each call finishes its device work."""
        m, x = self.model, case.inputs
        if case.stage in ("encoder", "generate"):
            images, sizes = self.tensor(x["images"]), self.tensor(x["sizes"])
        if case.stage in ("prefill", "decode"):
            summaries = self.tensor(x["window_embeddings"])

        def prompt(ids) -> torch.Tensor:
            return torch.tensor([ids] * case.batch, device=self.device)

        def prefill(tokens):
            cache = m.empty_cache(case.batch, device=self.device)
            h, cache = m.decode(m.embed(tokens, summaries), cache, torch.arange(tokens.shape[1], device=self.device))
            return m.logits(h[:, -1]), cache

        if case.stage == "encoder":
            run = lambda: m.encode_images(images, sizes)
        elif case.stage == "prefill":
            tokens = prompt(x["ids"])
            run = lambda: prefill(tokens)
        elif case.stage == "decode":
            c = case.context
            with torch.no_grad():
                _, cache = prefill(prompt(x["ids"][:c]))
                step = m.embed(prompt(x["ids"][c : c + 1]))
            pos = torch.tensor([c], device=self.device)
            run = lambda: m.decode(step, cache, pos)
        elif case.stage == "generate":
            tokens = prompt(x["ids"])
            run = lambda: list(generate(m, tokens, images, sizes, Sampling(max_new_tokens=x["new_tokens"], stop=None)))
        else:
            raise PixdeployError(f"no eager baseline for stage {case.stage!r}")

        def timed():
            with torch.no_grad():
                run()
            self._sync()

        return timed
