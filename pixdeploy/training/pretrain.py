"""`train`: the checks that come before any work, the run folder's lock, the plan, then the loop."""

from __future__ import annotations

from pathlib import Path

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.config import ModelConfig
from pixdeploy.errors import PixdeployError
from pixdeploy.training.config import RunOptions, TrainConfig
from pixdeploy.training.distributed import Dist, setup_dist
from pixdeploy.training.metrics import METRICS_FILE, read_metrics
from pixdeploy.training.plan import prepare
from pixdeploy.training.run_folder import check_run_dir, run_lock
from pixdeploy.training.train_loop import loop


def train(data: str | Path, out: str | Path, cfg: ModelConfig, tc: TrainConfig,
          options: RunOptions | None = None) -> dict:
    """Train (or resume, ``options.resume``) a model in the run folder ``out``; returns a summary of the final
    state. One process trains in a run folder at a time (a second is refused)."""
    options = options or RunOptions()
    out = Path(out)
    if str(out) in ("", "."):
        raise PixdeployError("--out must name a run folder ('' or '.' would write into the current folder)")
    from pixdeploy.machine import usable_cpus

    if tc.num_workers > usable_cpus():  # each worker is a process: more than the CPUs only stalls the machine
        raise PixdeployError(f"--workers {tc.num_workers} is more than the {usable_cpus()} CPU(s) this process "
                             "may use")
    d = setup_dist()
    existing = check_run_dir(out, options.resume, options.echo if d.main else None)
    d.barrier()  # every rank has seen the folder as it was before rank 0 writes into it
    with run_lock(out, d):
        # existing is None for a --resume of a run stopped before its first checkpoint: it starts anew
        plan = prepare(data, out, existing, cfg, tc, options)
        if plan.ckpt is not None and plan.ckpt.step >= tc.steps:
            return complete_run_summary(plan.ckpt, out, d, tc, options.model_factory)
        return loop(plan, tc, d, options)


def complete_run_summary(ckpt: Checkpoint, out: Path, d: Dist, tc: TrainConfig, model_factory) -> dict:
    """A resumed run whose checkpoint already reached --steps: nothing to train; the numbers are the
    run's own, read back from its metrics."""
    last: dict = {}
    for record in read_metrics(out / METRICS_FILE):
        if record.get("step", 0) <= ckpt.step:
            last.update(record)
    last["step"] = ckpt.step
    return {**last, "params": model_factory(ckpt.config).num_params(), "config": ckpt.config.to_dict(),
            "processes": d.world, "pixel_tokens_per_s": last.get("pixel_tokens_per_s", 0.0), "skipped": [],
            "checkpoint": str(ckpt.path), "already_complete": True, "steps_asked": tc.steps}
