"""The training loop, one function per stage of a step, in nanoGPT's order: lr -> micro-steps -> clip ->
step -> log, then the eval and checkpoint the step reaches (nanoGPT runs them at the top of the next
iteration; here they close the step that reaches them, so a checkpoint at step n holds n steps and
``on_step(n)`` finds it on disk)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from pixdeploy.checkpoint import (
    CKPT_DIR,
    Checkpoint,
    find_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from pixdeploy.data import BatchStream, make_loader
from pixdeploy.errors import PixdeployError
from pixdeploy.model import PixTokenLM, split_losses
from pixdeploy.training.config import RunOptions, TrainConfig, lr_at, resolve_precision
from pixdeploy.training.distributed import Dist
from pixdeploy.training.metrics import METRICS_FILE, MetricsLog, drop_metrics_after
from pixdeploy.training.plan import RunPlan, batch_stream, to_device


class TrainingDiverged(PixdeployError):
    """The loss, the gradients or the weights stopped being finite numbers: training stops, nothing is saved."""


@dataclass
class Run:
    """One training run in progress: what the stages of a step read and move on."""

    plan: RunPlan
    tc: TrainConfig
    d: Dist
    model: PixTokenLM
    ddp_model: torch.nn.Module  # the model itself, or under DistributedDataParallel when several processes train
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    batches: Iterator[dict]
    metrics: MetricsLog
    step: int  # optimizer steps done
    skipped: list[str]  # unreadable files and unusable lines met so far
    bar: object | None = None  # the progress bar, on rank 0 when asked for
    last: dict = field(default_factory=dict)  # the latest step's figures, and the latest eval's
    pixels_seen: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.amp_dtype)

    def pixel_tokens_per_s(self) -> float:
        return self.pixels_seen * self.d.world / max(time.perf_counter() - self.t0, 1e-9)


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


def start_run(plan: RunPlan, tc: TrainConfig, d: Dist, options: RunOptions) -> Run:
    """The model, optimizer and loss scaler (restored when resuming), the batches from where the run stands,
    and its metrics file (cut back to the checkpoint a resume continues)."""
    torch.manual_seed(tc.seed)
    model = options.model_factory(plan.cfg).to(d.device)
    opt = configure_optimizer(model, tc, d.device)
    amp_dtype = resolve_precision(tc.precision, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    step = restore(plan, model, opt, scaler)
    ddp_model = model
    if d.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    batches = batch_stream(plan, tc, d, start=step * tc.grad_accum)
    if options.echo and d.main:  # once every check passed: an error stays the only line
        options.echo(f"data: {plan.dataset.reading}")
    metrics_path = plan.out / METRICS_FILE
    if d.main and plan.ckpt is not None:
        drop_metrics_after(metrics_path, step)
    metrics = MetricsLog(metrics_path, writes=d.main, held=plan.ckpt is None)
    return Run(plan, tc, d, model, ddp_model, opt, scaler, amp_dtype, batches, metrics, step,
               list(plan.dataset.skipped))


def set_lr(run: Run) -> float:
    lr = lr_at(run.step, run.tc)
    for group in run.opt.param_groups:
        group["lr"] = lr
    return lr


def micro_steps(run: Run) -> torch.Tensor:
    """``grad_accum`` forward and backward passes, gradients synced across processes on the last one only;
    returns this process's loss of the step."""
    tc, d, cfg = run.tc, run.d, run.plan.cfg
    micro_loss = torch.zeros((), device=d.device)
    for micro in range(tc.grad_accum):
        batch = next(run.batches)
        run.skipped += batch["skipped"]
        t = to_device(batch, d.device)
        sync = micro == tc.grad_accum - 1 or d.world == 1
        with contextlib.nullcontext() if sync else run.ddp_model.no_sync(), run.autocast():
            logits = run.ddp_model(t["tokens"], t["images"], t["sizes"])
            losses = split_losses(logits, t["targets"], cfg.text_vocab, tc.word_loss_weight)
            loss = losses["loss"] / tc.grad_accum
        run.scaler.scale(loss).backward()
        micro_loss += loss.detach()
        run.pixels_seen += t["images"].shape[0] * cfg.image_size**2
    return micro_loss


def clip(run: Run) -> float:
    """Unscale the gradients (fp16) and clip them; returns their norm before clipping."""
    run.scaler.unscale_(run.opt)
    return float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.tc.grad_clip))


def stop_if_diverged(run: Run, loss: float, grad_norm: float) -> None:
    """Checked before the optimizer step, so the weights stay finite; nothing of this run is saved past here.
    Under fp16 the loss scaler skips a step whose gradients are not finite, and lowers its scale."""
    if not math.isfinite(loss):
        diverged(run, run.step + 1, f"the loss is {loss}")
    if not run.scaler.is_enabled() and not math.isfinite(grad_norm):
        diverged(run, run.step + 1, f"the gradient norm is {grad_norm}")


def optimizer_step(run: Run) -> None:
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1


def log_step(run: Run, lr: float, loss: float, grad_norm: float) -> None:
    tc = run.tc
    run.last = {"step": run.step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
    if run.step % tc.log_every == 0 or run.step == tc.steps:
        run.metrics.write({**run.last, "pixel_tokens_per_s": run.pixel_tokens_per_s()})
    if run.bar is not None:
        run.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
        run.bar.update(1)


def eval_and_checkpoint(run: Run) -> None:
    """Every ``eval_every`` and ``ckpt_every`` steps, and after the last step."""
    tc, step = run.tc, run.step
    if (step % tc.eval_every == 0 or step == tc.steps) and run.plan.eval_ex:
        run.last.update(evaluate(run))
        run.metrics.write({"step": step, **{k: v for k, v in run.last.items() if k.startswith("eval_")}})
    if step % tc.ckpt_every == 0 or step == tc.steps:
        save(run)
        run.d.barrier()


def train_step(run: Run) -> None:
    lr = set_lr(run)
    micro_loss = micro_steps(run)
    grad_norm = clip(run)
    loss = float(run.d.sum(micro_loss) / run.d.world)  # every process sees the same value
    stop_if_diverged(run, loss, grad_norm)
    optimizer_step(run)
    log_step(run, lr, loss, grad_norm)
    eval_and_checkpoint(run)


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Mean pixel-token and word-token losses over (up to) eval_batches held-out batches."""
    model, examples, cfg, tc, d = run.model, run.plan.eval_ex, run.plan.cfg, run.tc, run.d
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=d.device)
    bs = max(1, min(tc.batch_size, len(examples) // d.world))
    stream = BatchStream(examples, run.plan.tok, cfg, bs, 0, tc.seed, d.rank, d.world)
    for i, batch in enumerate(make_loader(stream, 0)):
        if i >= tc.eval_batches:
            break
        t = to_device(batch, d.device)
        with run.autocast():
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


def save(run: Run) -> None:
    """Rank 0 writes the checkpoint (weights that are not finite never reach the disk), then the metrics
    that waited for it."""
    if not run.d.main:
        return
    model, tc = run.model, run.tc
    if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        diverged(run, run.step, "the weights are no longer finite numbers")
    tensors, state = optimizer_to_flat(run.opt)
    tensors["rng.cpu"] = torch.get_rng_state()
    state["scaler"] = run.scaler.state_dict()
    state["train_config"] = dataclasses.asdict(tc)
    save_checkpoint(run.plan.out, model.state_dict(), run.plan.cfg, run.plan.tok, run.step, (tensors, state))
    run.metrics.release()


def diverged(run: Run, step: int, problem: str):
    """Stop the run (`TrainingDiverged`): ``problem`` says what stopped being finite."""
    found = find_checkpoint(run.plan.out)
    kept = (f"the last good checkpoint {found} (step {Checkpoint(found).step}) is kept" if found is not None
            else "no checkpoint was written")
    raise TrainingDiverged(f"training stopped at step {step}: {problem} with --lr {run.tc.lr:g} and "
                           f"--word-loss-weight {run.tc.word_loss_weight:g}; {kept} (a lower --lr "
                           "or --word-loss-weight may help)")


@contextlib.contextmanager
def progress_bar(run: Run, show: bool):
    if not (show and run.d.main):
        yield
        return
    from tqdm import tqdm

    run.bar = tqdm(total=run.tc.steps, initial=run.step, desc="train", unit="step", dynamic_ncols=True)
    try:
        yield
    finally:  # an error too ends the bar's line, so the error is printed on a line of its own
        run.bar.close()


def summary(run: Run) -> dict:
    return {**run.last, "params": run.model.num_params(), "config": run.plan.cfg.to_dict(),
            "processes": run.d.world, "pixel_tokens_per_s": run.pixel_tokens_per_s(),
            "skipped": sorted(set(run.skipped)), "checkpoint": str(run.plan.out / CKPT_DIR)}


def loop(plan: RunPlan, tc: TrainConfig, d: Dist, options: RunOptions) -> dict:
    """Train from where ``plan`` stands to ``tc.steps``; returns the summary of the final state."""
    run = start_run(plan, tc, d, options)
    with progress_bar(run, options.progress):
        run.model.train()
        while run.step < tc.steps:
            train_step(run)
            if options.on_step is not None:
                options.on_step(run.step)
    return summary(run)
