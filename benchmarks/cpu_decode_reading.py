"""Every CPU decode path on a trained model, in one run: held-out reading, agreement with today's plain fp32 and
decode speed side by side.

    python -m benchmarks.cpu_decode_reading            # about 4 minutes on 2 idle cores

The model is the demo's (`pixdeploy.demo.DemoPlan`: rendered digits, the tiny preset at 24x24 with one image
layer, 800 steps), with 6 heads of 16 instead of 4 of 24, since onnxruntime's fused attention takes head sizes
that are multiples of 16. Paths, each a `Pipeline` over the variant `quantize --target cpu` would make:
``plain-fp32`` (the baseline), ``plain-int8-dynamic``, ``fused-fp32``, ``fused-int8``, ``fused-int4`` (the
int8 ones with the dynamic int8 encoder, as `pixdeploy.export.cpu_schemes` pairs them).

Per path: the share of the 200 held-out images read right, the share answered exactly as plain fp32 answers,
and ms per decode step at batch 1 and 8 after the image prompt (steps interleaved between paths in runs of 10
calls, as a decode loop runs one path back to back), with tokens/s and the ratio to plain fp32. Results:
``benchmarks/results/cpu_decode_reading.json`` (``$OUT`` if set).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from pixdeploy.export.bundle import export_bundle
from pixdeploy.runtime import Pipeline

from benchmarks.cpu_generate import BASELINE, make_pipelines
from benchmarks.timing import interleaved, machine, write
from pixdeploy.checkpoint import Checkpoint
from pixdeploy.cpu import cpu_class
from pixdeploy.data import load_examples
from pixdeploy.demo import DemoPlan
from pixdeploy.demo_data import make_demo_set
from pixdeploy.training import RunOptions, TrainConfig, train

PATHS = {"plain-int8-dynamic": "dynamic", "fused-fp32": None, "fused-int8": "fused-int8", "fused-int4": "fused-int4"}
PLAN = DemoPlan(model=(("image_size", 24), ("image_layers", 1), ("n_heads", 6)))
BLOCK = 10


def trained_bundle(root: Path, steps: int):
    cfg = PLAN.config()
    train_txt, eval_txt = make_demo_set(root / "data", PLAN.n_train, PLAN.n_eval, cfg.image_size, PLAN.max_number)
    tc = TrainConfig(steps=steps, batch_size=PLAN.batch_size, lr=PLAN.lr, warmup=min(100, steps),
                     eval_every=steps, ckpt_every=steps, log_every=50, vocab_size=PLAN.vocab_size, num_workers=1,
                     word_loss_weight=PLAN.word_loss_weight)
    train(train_txt, root / "run", cfg, tc, RunOptions(progress=False))
    held_out = load_examples(eval_txt)
    parity_images = [ex.segments[0] for ex in held_out[:16]]
    bundle, _ = export_bundle(root / "run", root / "bundle", images=parity_images, echo=lambda *_: None)
    return bundle, Checkpoint(root / "run").load_model(), held_out


def step_fn(pipe: Pipeline, images: list):
    """One decode step after the image prompt of ``images`` (batch = len(images)), fed back the same cache."""
    emb, ids = pipe.embed(images), pipe.prompt_ids()
    logits, cache = pipe.prefill(emb, ids)
    nxt = logits[:, : pipe.cfg.text_vocab].argmax(-1)
    embeds = pipe.text_embeddings[nxt][:, None].astype(np.float32)
    pos = np.array([len(ids)], np.int64)
    feed = {"embeds": embeds, "input_pos": pos, **cache}
    return lambda: pipe.decoder.infer(feed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=PLAN.steps)
    ap.add_argument("--iters", type=int, default=60)
    args = ap.parse_args()
    result = {"model": PLAN.describe(), "steps": args.steps, "machine": {**machine(), "isa": cpu_class()},
              "paths": {}}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        print(f"training {PLAN.describe()} for {args.steps} steps", flush=True)
        bundle, model, held_out = trained_bundle(root, args.steps)
        pipes = make_pipelines(bundle, model, root, PATHS)
        images = [ex.segments[0] for ex in held_out]
        truth = [ex.texts[0].strip() for ex in held_out]
        read = {n: [r.strip() for r in p.generate_batch(images, max_new_tokens=8)] for n, p in pipes.items()}
        timing = {}
        for batch in (1, 8):
            rows = interleaved({n: step_fn(p, images[:batch]) for n, p in pipes.items()}, args.iters, block=BLOCK)
            timing[batch] = rows
        for n in pipes:
            row = {"held_out_read_pct": 100 * float(np.mean([r == t for r, t in zip(read[n], truth)])),
                   "answers_equal_plain_fp32_pct": 100 * float(np.mean([a == b for a, b in zip(read[n],
                                                                                              read[BASELINE])]))}
            for batch, rows in timing.items():
                ms = rows[n]["p50_ms"]
                row[f"batch{batch}"] = {**rows[n], "tokens_per_s": round(batch * 1000 / ms, 1),
                                        "ratio_vs_plain_fp32_p50": round(rows[BASELINE]["p50_ms"] / ms, 3)}
            result["paths"][n] = row
        for p in pipes.values():
            p.close()
    write("cpu_decode_reading", result)
    print(f"\n{result['model']}, {args.steps} steps; {result['machine']['isa']}, onnxruntime "
          f"{result['machine']['onnxruntime']}; 200 held-out images")
    print(f"{'path':<20}{'read':>7}{'= fp32':>8}" + "".join(f"{f'b{b} ms/token':>14}{'tokens/s':>10}{'ratio':>8}"
                                                        for b in (1, 8)))
    for n, r in result["paths"].items():
        print(f"{n:<20}{r['held_out_read_pct']:>6.1f}%{r['answers_equal_plain_fp32_pct']:>7.1f}%" + "".join(
            f"{r[f'batch{b}']['p50_ms']:>14.3f}{r[f'batch{b}']['tokens_per_s']:>10.0f}"
            f"{r[f'batch{b}']['ratio_vs_plain_fp32_p50']:>7.2f}x" for b in (1, 8)))


if __name__ == "__main__":
    main()
