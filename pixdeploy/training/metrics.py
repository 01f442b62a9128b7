"""A run's metrics.jsonl: one JSON record a line, written by rank 0, read back by a resume and a summary."""

from __future__ import annotations

import json
from pathlib import Path

from pixdeploy.files import staged_file
from pixdeploy.jsonfile import BadJson, loads

METRICS_FILE = "metrics.jsonl"
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


class MetricsLog:
    """Appends records to metrics.jsonl on rank 0 (other ranks write nothing).

    Until the run has a checkpoint (``held``), records wait in memory: a run stopped before its first
    checkpoint (Ctrl-C, a full disk, kill -9) leaves no file that would make its folder look like a run to
    resume. `release` writes them once the first checkpoint is saved."""

    def __init__(self, path: Path, writes: bool, held: bool):
        self.path, self.writes = path, writes
        self.pending: list[dict] | None = [] if held else None

    def write(self, record: dict) -> None:
        if not self.writes:
            return
        if self.pending is not None:
            self.pending.append(record)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def release(self) -> None:
        if self.pending is not None:
            records, self.pending = self.pending, None
            for record in records:
                self.write(record)
