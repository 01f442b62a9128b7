"""python -m benchmarks.reading [--scale cpu|gpu|smoke] [--out DIR] [--seed N] [--force]

Renders the reading task, trains the pixel-token model and the patch-ViT baseline on it with the same
steps, data, optimizer and seed, reads the held-out set greedily, and writes ``reading.json``,
``reading.md`` (the table) and ``reading.png`` (accuracy against font size) into ``--out``.
Data and checkpoints live in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.reading.report import figure_class, plot, table
from benchmarks.reading.run import MODELS, PLANS, run_benchmark
from pixdeploy.errors import PixdeployError
from pixdeploy.files import staged_dir

RESULT = "reading.json"


def is_reading_output(path: Path) -> bool:
    return (path / RESULT).is_file()


def default_out(scale: str) -> Path:
    return Path(os.environ.get("OUT") or Path(__file__).resolve().parents[1] / "results") / f"reading-{scale}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reading", description=__doc__.split("\n\n")[1])
    ap.add_argument("--scale", choices=list(PLANS), default="cpu",
                    help="cpu: under 40 min on 2 cores (default); gpu: a larger run; smoke: seconds, for CI")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results/reading-SCALE)")
    ap.add_argument("--seed", type=int, default=0, help="data, initialisation and batch order (default 0)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--force", action="store_true", help="replace an earlier result folder at --out")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or default_out(args.scale)
    try:
        figure_class()
        with staged_dir(out, replace=args.force, what="reading benchmark result folder",
                        is_replaceable=is_reading_output, echo=print) as tmp, \
                tempfile.TemporaryDirectory(prefix="pixdeploy-reading-") as work:
            result = run_benchmark(PLANS[args.scale], Path(work), args.models, args.seed,
                                   progress=not args.no_progress)
            result["scale"] = args.scale
            md = table(result)
            (tmp / "reading.md").write_text(md + "\n", encoding="utf-8")
            plot(result, tmp / "reading.png")
            (tmp / RESULT).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    except PixdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    print(md)
    print(f"wall time {result['wall_seconds'] / 60:.1f} min; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
