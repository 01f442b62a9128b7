"""Pretraining loop (nanoGPT order: lr -> eval/checkpoint -> micro-steps -> clip -> step -> log).

Runs as one process or under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on CUDA). Rank 0
writes the tokenizer, checkpoints and metrics. A run killed at any point resumes from its last
checkpoint and continues the same run: same batches in the same order, same optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pixdeploy.checkpoint import (
    CKPT_DIR,
    Checkpoint,
    find_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from pixdeploy.config import ModelConfig
from pixdeploy.data import BatchStream, Example, holdout_split, load_data, make_loader, require_readable
from pixdeploy.errors import CheckpointError, PixdeployError
from pixdeploy.files import clean_stale, staged_file
from pixdeploy.jsonfile import BadJson, loads
from pixdeploy.model import PixTokenLM, split_losses
from pixdeploy.tokenizer import Tokenizer


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


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t


def setup_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def to_device(batch: dict, device) -> dict:
    return {k: torch.as_tensor(batch[k]).to(device) for k in ("tokens", "targets", "images", "sizes")}


def batch_stream(examples, tok, cfg, tc, d: Dist, start: int):
    """Endless batches from global batch counter ``start`` on (epochs follow one another). Checked
    when called, not at the first batch: the error comes before the run folder or progress bar exist."""
    probe = BatchStream(examples, tok, cfg, tc.batch_size, 0, tc.seed, d.rank, d.world)
    if probe.n_batches == 0:
        raise PixdeployError(f"{len(examples)} training examples cannot fill one batch of {tc.batch_size} "
                             f"per process; lower --batch-size")

    def batches():
        epoch, b = divmod(start, probe.n_batches)
        while True:
            stream = BatchStream(examples, tok, cfg, tc.batch_size, epoch, tc.seed, d.rank, d.world, start=b)
            yield from make_loader(stream, tc.num_workers)
            epoch, b = epoch + 1, 0

    return batches()


@torch.no_grad()
def evaluate(model, examples, tok, cfg, tc, d: Dist, autocast) -> dict:
    """Mean pixel-token and word-token losses over (up to) eval_batches held-out batches."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=d.device)
    bs = max(1, min(tc.batch_size, len(examples) // d.world))
    stream = BatchStream(examples, tok, cfg, bs, 0, tc.seed, d.rank, d.world)
    for i, batch in enumerate(make_loader(stream, 0)):
        if i >= tc.eval_batches:
            break
        t = to_device(batch, d.device)
        with autocast():
            logits = model(t["tokens"], t["images"], t["sizes"])
        out = split_losses(logits, t["targets"], cfg.text_vocab)
        sums += torch.stack([out["pixel_sum"], out["pixel_count"], out["word_sum"], out["word_count"]]).double()
    d.sum(sums)
    model.train()
    res = {}
    if sums[1] > 0:
        res["eval_pixel_loss"] = float(sums[0] / sums[1])
    if sums[3] > 0:
        res["eval_word_loss"] = float(sums[2] / sums[3])
    return res


METRIC_FIGURES = ("loss", "eval_pixel_loss", "eval_word_loss", "pixel_tokens_per_s")  # what a summary shows


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl. A line that is not a record this module wrote (cut short by a
    kill, edited, not UTF-8, a step that is not a count, a figure that is not a finite number) is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = loads(line)
        except BadJson:
            continue
        if not isinstance(record, dict):
            continue
        step = record.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            continue
        if all(isinstance(record.get(k, 0.0), (int, float)) and not isinstance(record.get(k, 0.0), bool)
               for k in METRIC_FIGURES):
            records.append(record)
    return records


def drop_metrics_after(path: Path, step: int) -> None:
    """On resume, forget what a killed run logged past its last checkpoint: those steps run again."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    with staged_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def check_run_dir(out: Path, resume: bool, echo=None) -> Path | None:
    """Refuse, before any work, a run directory that is not ours to write; returns the checkpoint to
    resume from. Without --resume, a folder holding anything (a previous run, even a damaged one, or
    the user's files) is never written into; temporaries of a killed save are removed and reported."""
    if out.exists() and not out.is_dir():
        raise PixdeployError(f"--out {out} exists and is not a folder")
    if not out.is_dir():
        if resume and echo:  # a run stopped before its first checkpoint leaves nothing (see `loop`)
            echo(f"no checkpoint in {out} yet: training from step 0")
        return None
    clean_stale(out / CKPT_DIR, echo)
    existing = find_checkpoint(out)
    if resume:
        if existing is None:
            if (out / CKPT_DIR).exists():
                raise CheckpointError(f"cannot resume: {out / CKPT_DIR} is damaged (meta.json missing); "
                                      "nothing was changed")
            if any(out.iterdir()):
                raise CheckpointError(f"--resume given but {out} holds no checkpoint (and is not empty)")
            if echo:
                echo(f"no checkpoint in {out} yet: training from step 0")
        return existing
    if existing is not None:
        raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue it "
                              "or choose another --out")
    held = sorted(p.name for p in out.iterdir())
    if held:
        raise PixdeployError(f"{out} is not empty (holds {', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); "
                             "a new run needs a new or empty --out (--resume continues a run with a checkpoint)")
    return None


def complete_run_summary(ckpt: Checkpoint, out: Path, d: Dist, tc: TrainConfig, model_factory=PixTokenLM) -> dict:
    """A resumed run whose checkpoint already reached --steps: nothing to train; the numbers are the
    run's own, read back from its metrics."""
    last: dict = {}
    for record in read_metrics(out / "metrics.jsonl"):
        if record.get("step", 0) <= ckpt.step:
            last.update(record)
    last["step"] = ckpt.step
    return {**last, "params": model_factory(ckpt.config).num_params(), "config": ckpt.config.to_dict(),
            "processes": d.world, "pixel_tokens_per_s": last.get("pixel_tokens_per_s", 0.0), "skipped": [],
            "checkpoint": str(ckpt.path), "already_complete": True, "steps_asked": tc.steps}


def build_tokenizer(examples: list[Example], tc: TrainConfig) -> Tokenizer:
    texts = [t for ex in examples for t in ex.texts]
    return Tokenizer.train(texts, tc.vocab_size) if texts else Tokenizer.image_only()


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


def prepare(data, out: Path, existing: Path | None, cfg: ModelConfig, tc: TrainConfig, *, resume: bool, eval_data,
            image_root, data_kind: str, allow_outside_root: bool) -> RunPlan:
    """Data, hold-out split, tokenizer and config (or those of the checkpoint ``existing``, when resuming):
    every refusal comes here, before a model, a progress bar or a file exists."""
    data_kw = dict(kind=data_kind, allow_outside_root=allow_outside_root)
    dataset = load_data(data, image_root, **data_kw)
    require_readable(dataset.examples, cfg.image_size, data)
    if eval_data is not None:
        eval_set = load_data(eval_data, image_root, **data_kw)
        train_ex, eval_ex = dataset.examples, eval_set.examples
        dataset.skipped += eval_set.skipped
    else:
        train_ex, eval_ex = holdout_split(dataset.examples, tc.eval_percent)
    if not resume:
        tok = build_tokenizer(train_ex, tc)
        return RunPlan(out, cfg.replace(text_vocab=tok.vocab_size), tok, train_ex, eval_ex, dataset)
    ckpt = Checkpoint(existing)
    tensors, state = ckpt.train_state()  # refuses a weights-only checkpoint before any work
    if cfg.replace(text_vocab=ckpt.config.text_vocab) != ckpt.config:
        raise CheckpointError(f"checkpoint {ckpt.path} was trained with another model config; "
                              "resume with the same --preset")
    return RunPlan(out, ckpt.config, ckpt.tokenizer, train_ex, eval_ex, dataset, ckpt, tensors, state)


def configure_optimizer(model, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (nanoGPT's configure_optimizers)."""
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
    )


def restore(plan: RunPlan, model, opt, scaler) -> int:
    """A resumed run's weights, optimizer, loss scaler and RNG; returns the step it continues from."""
    if plan.ckpt is None:
        return 0
    model.load_state_dict(plan.ckpt.model_state())
    optimizer_from_flat(opt, plan.resume_tensors, plan.resume_state)
    if "scaler" in plan.resume_state:
        scaler.load_state_dict(plan.resume_state["scaler"])
    torch.set_rng_state(plan.resume_tensors["rng.cpu"])
    return plan.ckpt.step


def train(data: str | Path, out: str | Path, cfg: ModelConfig, tc: TrainConfig, *, resume: bool = False,
          eval_data: str | Path | None = None, image_root: str | Path | None = None,
          data_kind: str = "auto", allow_outside_root: bool = False,
          progress: bool = True, on_step=None, echo=None, model_factory=PixTokenLM) -> dict:
    """Train (or resume) a model; returns a summary of the final state. ``on_step(step)`` is called
    after every optimizer step (tests use it to interrupt a run); ``echo`` receives what the user
    should know before training starts (how the data was read, temporaries removed).
    ``model_factory(cfg)`` builds the model: a `PixTokenLM` subclass with another image encoder trains
    through the same loop. One process trains in a run folder at a time (a second is refused)."""
    out = Path(out)
    if str(out) in ("", "."):
        raise PixdeployError("--out must name a run folder ('' or '.' would write into the current folder)")
    from pixdeploy.machine import usable_cpus

    if tc.num_workers > usable_cpus():  # each worker is a process: more than the CPUs only stalls the machine
        raise PixdeployError(f"--workers {tc.num_workers} is more than the {usable_cpus()} CPU(s) this process "
                             "may use")
    d = setup_dist()
    existing = check_run_dir(out, resume, echo if d.main else None)
    d.barrier()  # every rank has seen the folder as it was before rank 0 writes into it
    with run_lock(out, d):
        resume = resume and existing is not None  # nothing to resume (a run stopped before its first checkpoint)
        plan = prepare(data, out, existing, cfg, tc, resume=resume, eval_data=eval_data, image_root=image_root,
                       data_kind=data_kind, allow_outside_root=allow_outside_root)
        if plan.ckpt is not None and plan.ckpt.step >= tc.steps:
            return complete_run_summary(plan.ckpt, out, d, tc, model_factory)
        return loop(plan, tc, d, progress=progress, on_step=on_step, echo=echo, model_factory=model_factory)


@contextlib.contextmanager
def run_lock(out: Path, d: Dist):
    """Rank 0 holds a lock on the run folder for the whole run: a second `train` on the same folder (two
    --resume, or two new runs) is refused in one line instead of both writing checkpoints and metrics. A
    folder made here and still empty when the run ends early is removed."""
    if not d.main:
        yield
        return
    from pixdeploy.files import try_lock

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with try_lock(out, f"another pixdeploy process is training in {out}; wait for it to finish (or stop it) "
                      "before starting another run there"):
            yield
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


class TrainingDiverged(PixdeployError):
    """The loss, the gradients or the weights stopped being finite numbers: training stops, nothing is saved."""


def diverged(out: Path, step: int, problem: str, tc: TrainConfig):
    """Stop the run (`TrainingDiverged`): ``problem`` says what stopped being finite."""
    from pixdeploy.checkpoint import Checkpoint

    found = find_checkpoint(out)
    kept = (f"the last good checkpoint {found} (step {Checkpoint(found).step}) is kept" if found is not None
            else "no checkpoint was written")
    raise TrainingDiverged(f"training stopped at step {step}: {problem} with "
                           f"--lr {tc.lr:g} and --word-loss-weight {tc.word_loss_weight:g}; {kept} (a lower --lr "
                           "or --word-loss-weight may help)")


def loop(plan: RunPlan, tc: TrainConfig, d: Dist, *, progress: bool, on_step, echo, model_factory) -> dict:
    """The training loop in nanoGPT's order: lr -> micro-steps -> clip -> step -> log -> eval -> checkpoint."""
    out, cfg, tok = plan.out, plan.cfg, plan.tok
    torch.manual_seed(tc.seed)
    model = model_factory(cfg).to(d.device)
    opt = configure_optimizer(model, tc, d.device)
    amp_dtype = resolve_precision(tc.precision, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    step = restore(plan, model, opt, scaler)

    ddp_model = model
    if d.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(d.device.type, dtype=amp_dtype)

    def save(step_done: int):
        if not d.main:
            return
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            diverged(out, step_done, "the weights are no longer finite numbers", tc)  # never saved
        tensors, state = optimizer_to_flat(opt)
        tensors["rng.cpu"] = torch.get_rng_state()
        state["scaler"] = scaler.state_dict()
        state["train_config"] = dataclasses.asdict(tc)
        save_checkpoint(out, model.state_dict(), cfg, tok, step_done, tensors, state)
        flush_pending()

    skipped: list[str] = list(plan.dataset.skipped)
    batches = batch_stream(plan.train_ex, tok, cfg, tc, d, start=step * tc.grad_accum)
    if echo and d.main:  # once every check passed: an error stays the only line
        echo(f"data: {plan.dataset.reading}")
    metrics_path = out / "metrics.jsonl"
    if d.main and plan.ckpt is not None:
        drop_metrics_after(metrics_path, step)

    # Until the run has a checkpoint, its metrics wait in memory: a run stopped before its first checkpoint
    # (Ctrl-C, a full disk, kill -9) leaves no file that would make its folder look like a run to resume.
    pending: list | None = [] if plan.ckpt is None else None

    def log(record: dict):
        if not d.main:
            return
        if pending is not None:
            pending.append(record)
            return
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def flush_pending():
        nonlocal pending
        if pending is not None:
            records, pending = pending, None
            for record in records:
                log(record)

    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    last = {}
    pixels_seen, t0 = 0, time.perf_counter()
    try:
        model.train()
        while step < tc.steps:
            lr = lr_at(step, tc)
            for group in opt.param_groups:
                group["lr"] = lr

            micro_loss = torch.zeros((), device=d.device)
            for micro in range(tc.grad_accum):
                batch = next(batches)
                skipped += batch["skipped"]
                t = to_device(batch, d.device)
                sync = micro == tc.grad_accum - 1 or d.world == 1
                with contextlib.nullcontext() if sync else ddp_model.no_sync(), autocast():
                    logits = ddp_model(t["tokens"], t["images"], t["sizes"])
                    losses = split_losses(logits, t["targets"], cfg.text_vocab, tc.word_loss_weight)
                    loss = losses["loss"] / tc.grad_accum
                scaler.scale(loss).backward()
                micro_loss += loss.detach()
                pixels_seen += t["images"].shape[0] * cfg.image_size**2
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            loss_value = float(d.sum(micro_loss.clone()) / d.world)  # every rank sees the same value
            if not math.isfinite(loss_value) or (not scaler.is_enabled() and not math.isfinite(float(grad_norm))):
                # Before the optimizer step, so the weights stay finite; nothing of this run is saved past here
                diverged(out, step + 1, f"the loss is {loss_value}" if not math.isfinite(loss_value)
                         else f"the gradient norm is {float(grad_norm)}", tc)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            last = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}
            if step % tc.log_every == 0 or step == tc.steps:
                elapsed = time.perf_counter() - t0
                log({**last, "pixel_tokens_per_s": pixels_seen * d.world / max(elapsed, 1e-9)})
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
                bar.update(1)
            if (step % tc.eval_every == 0 or step == tc.steps) and plan.eval_ex:
                last.update(evaluate(model, plan.eval_ex, tok, cfg, tc, d, autocast))
                log({"step": step, **{k: v for k, v in last.items() if k.startswith("eval_")}})
            if step % tc.ckpt_every == 0 or step == tc.steps:
                save(step)
                d.barrier()
            if on_step is not None:
                on_step(step)
    except BaseException:
        if bar is not None:  # end the bar's line so the error is printed on a line of its own
            bar.close()
        raise

    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    summary = {**last, "params": model.num_params(), "config": cfg.to_dict(), "processes": d.world,
               "pixel_tokens_per_s": pixels_seen * d.world / max(elapsed, 1e-9),
               "skipped": sorted(set(skipped)), "checkpoint": str(out / "checkpoint")}
    return summary
