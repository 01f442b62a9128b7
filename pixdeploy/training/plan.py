"""What a run reads before any model exists: its data and hold-out split, tokenizer and config (or those of the
checkpoint it continues), and the batches it trains on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.config import ModelConfig
from pixdeploy.data import BatchStream, Example, holdout_split, load_data, make_loader, require_readable
from pixdeploy.errors import CheckpointError, PixdeployError
from pixdeploy.tokenizer import Tokenizer
from pixdeploy.training.config import RunOptions, TrainConfig
from pixdeploy.training.distributed import Dist


@dataclass
class RunPlan:
    """What `prepare` decided before any model exists: the data split, the tokenizer and config, and the
    checkpoint a resumed run continues (with its optimizer tensors and state)."""

    out: Path
    cfg: ModelConfig
    tok: Tokenizer
    train_ex: list
    eval_ex: list
    dataset: object
    ckpt: Checkpoint | None = None
    resume_tensors: dict | None = None
    resume_state: dict | None = None


def build_tokenizer(examples: list[Example], tc: TrainConfig) -> Tokenizer:
    texts = [t for ex in examples for t in ex.texts]
    return Tokenizer.train(texts, tc.vocab_size) if texts else Tokenizer.image_only()


def prepare(data, out: Path, existing: Path | None, cfg: ModelConfig, tc: TrainConfig, options: RunOptions) -> RunPlan:
    """Data, hold-out split, tokenizer and config (or those of the checkpoint ``existing``, which the run
    continues): every refusal comes here, before a model, a progress bar or a file exists."""
    data_kw = dict(kind=options.data_kind, allow_outside_root=options.allow_outside_root)
    dataset = load_data(data, options.image_root, **data_kw)
    require_readable(dataset.examples, cfg.image_size, data)
    if options.eval_data is not None:
        eval_set = load_data(options.eval_data, options.image_root, **data_kw)
        train_ex, eval_ex = dataset.examples, eval_set.examples
        dataset.skipped += eval_set.skipped
    else:
        train_ex, eval_ex = holdout_split(dataset.examples, tc.eval_percent)
    if existing is None:
        tok = build_tokenizer(train_ex, tc)
        return RunPlan(out, cfg.replace(text_vocab=tok.vocab_size), tok, train_ex, eval_ex, dataset)
    ckpt = Checkpoint(existing)
    tensors, state = ckpt.train_state()  # refuses a weights-only checkpoint before any work
    if cfg.replace(text_vocab=ckpt.config.text_vocab) != ckpt.config:
        raise CheckpointError(f"checkpoint {ckpt.path} was trained with another model config; "
                              "resume with the same --preset")
    return RunPlan(out, ckpt.config, ckpt.tokenizer, train_ex, eval_ex, dataset, ckpt, tensors, state)


def batch_stream(plan: RunPlan, tc: TrainConfig, d: Dist, start: int):
    """Endless training batches from global batch counter ``start`` on (epochs follow one another). Checked
    when called, not at the first batch: the error comes before the progress bar or any file exists."""
    examples = plan.train_ex
    probe = BatchStream(examples, plan.tok, plan.cfg, tc.batch_size, 0, tc.seed, d.rank, d.world)
    if probe.n_batches == 0:
        raise PixdeployError(f"{len(examples)} training examples cannot fill one batch of {tc.batch_size} "
                             f"per process; lower --batch-size")

    def batches():
        epoch, b = divmod(start, probe.n_batches)
        while True:
            stream = BatchStream(examples, plan.tok, plan.cfg, tc.batch_size, epoch, tc.seed, d.rank, d.world,
                                 start=b)
            yield from make_loader(stream, tc.num_workers)
            epoch, b = epoch + 1, 0

    return batches()


def to_device(batch: dict, device) -> dict:
    return {k: torch.as_tensor(batch[k]).to(device) for k in ("tokens", "targets", "images", "sizes")}
