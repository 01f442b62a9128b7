"""Training throughput of a preset on this machine, in pixel tokens per second.

    python -m benchmarks.train_throughput --preset tiny --steps 30

Times full optimizer steps (forward, backward, clip, AdamW) on real rendered demo images, and reports
them against a forward-only pass measured in the same run (the baseline). Writes results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.timing import interleaved, machine, write
from pixdeploy.config import preset
from pixdeploy.data import BatchStream, load_examples
from pixdeploy.demo_data import make_demo_set
from pixdeploy.model import PixTokenLM, split_losses
from pixdeploy.tokenizer import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()

    cfg = preset(args.preset)
    with tempfile.TemporaryDirectory() as d:
        train_txt, _ = make_demo_set(d, args.batch_size, 1, cfg.image_size)
        examples = load_examples(train_txt)
        tok = Tokenizer.train([t for ex in examples for t in ex.texts], 64)
        cfg = cfg.replace(text_vocab=tok.vocab_size)
        batch = next(BatchStream(examples, tok, cfg, args.batch_size, 0, 0).batches())
    t = {k: torch.as_tensor(batch[k]) for k in ("tokens", "targets", "images", "sizes")}
    torch.manual_seed(0)
    model = PixTokenLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        loss = split_losses(model(t["tokens"], t["images"], t["sizes"]), t["targets"], cfg.text_vocab)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_only():
        model(t["tokens"], t["images"], t["sizes"])

    res = interleaved({"train_step": train_step, "forward_only": forward_only}, iters=args.steps)
    pixels = args.batch_size * cfg.image_size**2
    for r in res.values():
        r["pixel_tokens_per_s_p50"] = pixels / (r["p50_ms"] / 1e3)
    result = {"preset": args.preset, "batch_size": args.batch_size, "params": model.num_params(),
              "machine": machine(), "results": res,
              "train_vs_forward_time_ratio_p50": res["train_step"]["p50_ms"] / res["forward_only"]["p50_ms"]}
    write(f"train_throughput_{args.preset}", result)
    print(f"{'':14}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'pixel tok/s':>14}")
    for name, r in res.items():
        print(f"{name:14}{r['p50_ms']:>10.1f}{r['p90_ms']:>10.1f}{r['p99_ms']:>10.1f}"
              f"{r['pixel_tokens_per_s_p50']:>14,.0f}")
    print(f"train step / forward-only (p50): {result['train_vs_forward_time_ratio_p50']:.2f}x")


if __name__ == "__main__":
    main()
