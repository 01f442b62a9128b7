"""How images and words share one token sequence (torch-free: training, export and runtime use it).

    <s> text... <|image|> [one slot per window] <|/image|> text... </s>

A slot holds ``IMAGE_SLOT`` until the model puts that window's summary embedding there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pixdeploy.config import BOS_ID, EOS_ID, IMAGE_END_ID, IMAGE_SLOT, IMAGE_START_ID


def image_span(n_windows: int) -> list[int]:
    return [IMAGE_START_ID, *([IMAGE_SLOT] * n_windows), IMAGE_END_ID]


def image_prompt(n_windows: int, text_ids: Sequence[int] = ()) -> list[int]:
    """The generation prompt: <s>, the image, then the encoded text prompt."""
    return [BOS_ID, *image_span(n_windows), *text_ids]


def collect_until_stop(steps: Iterable, n: int, stop: Iterable[int] | None = (EOS_ID,)) -> list[list[int]]:
    """Gather per-sequence tokens from batched steps, each sequence ending at its first stop token."""
    stop = set(stop or ())
    out: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    for step in steps:
        for i, t in enumerate(step.tolist()):
            finished[i] = finished[i] or t in stop
            if not finished[i]:
                out[i].append(t)
    return out
