"""The parity gate: does a bundle answer as the PyTorch model does, on real images?

Per stage — encoder embeddings, prefill logits, greedy tokens over N decode steps — against thresholds
kept in one table per precision. The result is truthy on pass and lists every failing check.
"""

from __future__ import annotations

import numpy as np
import torch

from pixdeploy.errors import PixdeployError
from pixdeploy.parity_limits import THRESHOLDS, Check, ParityResult, answer_match, compare  # noqa: F401


class ParityError(PixdeployError):
    """A bundle failed its parity gate."""


@torch.no_grad()
def check_parity(model, pipeline, images: list, precision: str = "fp32", steps: int = 32) -> ParityResult:
    """Compare a loaded bundle (``pipeline``) with the PyTorch ``model`` on ``images`` (files or Pillow)."""
    from pixdeploy.runtime.sampling import Sampling

    from pixdeploy.generation import generate, prefill

    if precision not in THRESHOLDS:
        raise PixdeployError(f"no parity thresholds for precision {precision!r}")
    limits = THRESHOLDS[precision]
    cfg = model.cfg
    rgb, sizes = pipeline.preprocess(images)
    ids = pipeline.prompt_ids()
    steps = min(steps, cfg.max_seq_len - len(ids))

    ref_embed = model.encode_images(torch.from_numpy(rgb), torch.from_numpy(sizes)).numpy()
    got_embed = pipeline.embed_letterboxed(rgb, sizes)
    e = compare(got_embed, ref_embed)

    tokens = torch.tensor([ids] * len(rgb))
    ref_logits, _ = prefill(model, tokens, torch.from_numpy(rgb), torch.from_numpy(sizes))
    got_logits, _ = pipeline.prefill(got_embed, ids)
    lg = compare(got_logits, ref_logits.numpy())

    # Greedy over `steps` tokens, each side feeding back its own choices. An image matches when the
    # answer a user gets is the same: every token up to and including the reference's first `</s>`
    # (all `steps` when it never stops). Tokens after `</s>` are never shown and, past what the model
    # was trained on, sit in near-ties that any rounding flips; they are still counted, for the record,
    # in greedy_token_agreement.
    greedy = Sampling(max_new_tokens=steps, stop=None)  # one record: both sides run the same settings
    ref = torch.stack(list(generate(model, tokens, torch.from_numpy(rgb), torch.from_numpy(sizes), greedy)),
                      1).numpy()
    got = np.stack(list(pipeline.decode_steps(got_embed, ids, greedy)), 1)
    match = answer_match(got, ref)

    result = ParityResult(precision, len(rgb), steps, stats={"embeddings": e, "prefill_logits": lg,
                                                             "greedy_token_agreement": float((got == ref).mean())})
    measured = [  # (check, value, its key in THRESHOLDS, higher is better); a precision's row picks its checks
        ("embed_max_abs", e["max_abs"], "embed_max_abs", False),
        ("embed_cosine_min", e["cosine_min"], "embed_cosine_min", True),
        ("logits_max_abs", lg["max_abs"], "logits_max_abs", False),
        ("logits_cosine_min", lg["cosine_min"], "logits_cosine_min", True),
        ("greedy_match", match, "greedy_match_min", True),
    ]
    result.checks = [Check(name, value, limits[key], higher) for name, value, key, higher in measured if key in limits]
    return result


def default_parity_images() -> list:
    """Real photographs and handwriting shipped with scikit-learn (`pixdeploy.sample_images`)."""
    from pixdeploy.sample_images import sample_images

    return sample_images()
