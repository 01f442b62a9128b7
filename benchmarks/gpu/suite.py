"""One command for a GPU: its peaks, training, the image block, window attention, the decoder, parity
across precisions and the exported graphs, all measured in one run.

    python -m benchmarks.gpu.suite                                       # paper-120m on the CUDA GPU
    python -m benchmarks.gpu.suite --device cpu --preset tiny --smoke    # every stage that needs no CUDA

Stages (DESIGN.md §7: warm-up, CUDA events, medians, real inputs, rotated buffers, peaks in the same run):
- peaks: a large matmul per dtype (TFLOP/s) and a device-to-device copy (GB/s).
- train: the preset on the built-in demo data with bf16 autocast, then fp16 autocast with the loss
  scaler (fp32 on CPU): loss falls, nothing non-finite, pixel tokens/s, achieved TFLOP/s.
- image_block: window summaries of real images at several batch sizes: eager fp32/bf16/fp16 with SDPA,
  the Triton kernel, torch.compile, CUDA graphs; achieved TFLOP/s as a fraction of the matmul peak.
- window_attention: the attention alone on real activations, every SDPA backend on the model's boolean
  mask (which run and how fast), flash with a plain causal mask as a speed reference, the Triton kernel
  (full and one query per window), each with its error against fp32.
- decoder: prefill of the image windows and a short prompt, then one-token decode over the fixed-size
  KV cache, eager and with CUDA graphs; per-token time against the weight-streaming bound.
- parity: bf16 and fp16 weights against fp32 on real images (embeddings, prefill logits, greedy tokens).
- onnx: the exported graphs through onnxruntime against PyTorch, timed against PyTorch on the CPU.

The model of every stage after ``train`` is the one that stage trained. One JSON goes to ``--out`` (or
``$OUT``, else benchmarks/results/), and a short table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu.checks import stage_onnx, stage_parity
from benchmarks.gpu.context import Context, Plan, make_plan, say
from benchmarks.gpu.decoder import stage_decoder
from benchmarks.gpu.image import stage_image_block, stage_window_attention
from benchmarks.gpu.measure import device_name
from benchmarks.gpu.report import goals, summary
from benchmarks.gpu.training import stage_peaks, stage_train
from pixdeploy.config import PRESETS, preset
from pixdeploy.errors import PixdeployError
from pixdeploy.files import staged_file

STAGES = ("peaks", "train", "image_block", "window_attention", "decoder", "parity", "onnx")

STAGE_FNS = {"peaks": stage_peaks, "train": stage_train, "image_block": stage_image_block,
             "window_attention": stage_window_attention, "decoder": stage_decoder, "parity": stage_parity,
             "onnx": stage_onnx}


# ---- driver -------------------------------------------------------------------------------------------


def load_real_images(ctx: Context) -> None:
    """scikit-learn's photos and handwritten digits, plus rendered demo numbers: real pixels."""
    from pixdeploy.export.parity import default_parity_images

    from pixdeploy.demo_data import render_number
    from pixdeploy.folding import prepare_batch

    rng = np.random.default_rng(1)
    renders = [render_number(int(n), rng, ctx.cfg.image_size) for n in rng.integers(0, 100, 8)]
    ctx.images, ctx.sizes = prepare_batch(default_parity_images() + renders, ctx.cfg.image_size)


def run_suite(plan: Plan, stages: tuple[str, ...]) -> dict:
    ctx = Context(plan, cfg=preset(plan.preset))
    torch.manual_seed(0)
    load_real_images(ctx)
    report = {"suite": "gpu", "preset": plan.preset, "device": str(plan.device),
              "device_name": device_name(plan.device),
              "smoke": plan.smoke, "torch": torch.__version__, "cuda": torch.version.cuda,
              "plan": {k: (str(v) if k == "device" else v) for k, v in plan.__dict__.items()}, "stages": {}}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    for name in STAGES:
        if name not in stages:
            report["stages"][name] = {"skipped": "not asked for (--stages)"}
            continue
        if name != "peaks" and name != "train" and ctx.model is None:
            raise PixdeployError(f"stage {name} needs the model the train stage makes; add train to --stages")
        say(f"== {name}")
        t0 = time.perf_counter()
        report["stages"][name] = {**STAGE_FNS[name](ctx), "stage_s": time.perf_counter() - t0}
        if name == "peaks" and plan.cuda:
            report["stages"][name]["memory_gb"] = torch.cuda.get_device_properties(plan.device).total_memory / 2**30
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu.suite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--preset", default="paper-120m", choices=list(PRESETS))
    ap.add_argument("--smoke", action="store_true", help="a few steps and iterations of each stage")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--train-steps", type=int)
    ap.add_argument("--train-batch", type=int)
    ap.add_argument("--out", help="folder for the JSON (default: $OUT, else benchmarks/results)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.device not in ("cuda", "cpu"):
            raise PixdeployError(f"--device must be cuda or cpu, got {args.device!r}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise PixdeployError("--device cuda: no CUDA GPU is visible to torch; use --device cpu for the CPU stages")
        for name in ("train_steps", "train_batch"):
            value = getattr(args, name)
            if value is not None and value < 2:
                raise PixdeployError(f"--{name.replace('_', '-')} must be at least 2, got {value}")
        out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).parent.parent / "results")
        if out_dir.exists() and not out_dir.is_dir():
            raise PixdeployError(f"--out {out_dir} is a file; give a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        device = torch.device(args.device)
        plan = make_plan(args.preset, device, args.smoke, args.train_steps, args.train_batch)
        report = run_suite(plan, tuple(args.stages))
        report["goals"] = goals(report)
        path = out_dir / f"gpu_suite_{args.preset}_{device.type}{'_smoke' if args.smoke else ''}.json"
        with staged_file(path) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        say(f"wrote {path}")
        print(summary(report))
        return 0
    except (PixdeployError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
