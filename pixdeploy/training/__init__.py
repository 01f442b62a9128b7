"""Pretraining (nanoGPT's loop: lr -> micro-steps -> clip -> step -> log -> eval/checkpoint).

Runs as one process or under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on CUDA). Rank 0
writes the tokenizer, checkpoints and metrics. A run killed at any point resumes from its last
checkpoint and continues the same run: same batches in the same order, same optimizer state.

    config       TrainConfig (hyper-parameters), RunOptions (how a run reads data and reports), lr schedule
    distributed  Dist: this process's rank, the number of processes, its device
    run_folder   which --out a run may write, the checkpoint a resume continues, the lock
    metrics      metrics.jsonl: reading, cutting back on resume, writing
    plan         data, hold-out split, tokenizer and config before any model exists; the batch stream
    train_loop   the run's state and one function per stage of a step
    pretrain     train(): checks, lock, plan, loop
"""

from pixdeploy.training.config import PRECISIONS, RunOptions, TrainConfig, lr_at, resolve_precision
from pixdeploy.training.distributed import Dist, setup_dist
from pixdeploy.training.metrics import METRIC_FIGURES, drop_metrics_after, read_metrics
from pixdeploy.training.plan import RunPlan, batch_stream, build_tokenizer, prepare, to_device
from pixdeploy.training.pretrain import complete_run_summary, train
from pixdeploy.training.run_folder import check_run_dir, run_lock
from pixdeploy.training.train_loop import TrainingDiverged, configure_optimizer, evaluate, loop, restore

__all__ = [
    "METRIC_FIGURES", "PRECISIONS", "Dist", "RunOptions", "RunPlan", "TrainConfig", "TrainingDiverged",
    "batch_stream", "build_tokenizer", "check_run_dir", "complete_run_summary", "configure_optimizer",
    "drop_metrics_after", "evaluate", "loop", "lr_at", "prepare", "read_metrics", "resolve_precision", "restore",
    "run_lock", "setup_dist", "to_device", "train",
]
