"""Suite stages that check answers: bf16/fp16 parity against fp32, and the exported graphs through
onnxruntime."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu.context import (
    DTYPES,
    PROMPT,
    Context,
    cast_weights,
    say,
)


def stage_parity(ctx: Context) -> dict:
    from pixdeploy.export.parity import compare

    from pixdeploy.generation import Sampling, generate, prefill
    from pixdeploy.sequence import image_prompt

    p = ctx.plan
    images = torch.from_numpy(ctx.images[: p.parity_images]).to(p.device)
    sizes = torch.from_numpy(ctx.sizes[: p.parity_images]).to(p.device)
    ids = image_prompt(ctx.cfg.n_windows, ctx.tokenizer.encode(PROMPT))
    tokens = torch.tensor([ids] * len(images), device=p.device)
    steps = min(p.greedy_steps, ctx.cfg.max_seq_len - len(ids))
    all_steps = Sampling(max_new_tokens=steps, stop=None)  # greedy, never stopping early

    def answers(model):
        with torch.no_grad():
            emb = model.encode_images(images, sizes).float()
            logits, _ = prefill(model, tokens, images, sizes)
            greedy = torch.stack(list(generate(model, tokens, images, sizes, all_steps)), 1)
        return emb.cpu().numpy(), logits.float().cpu().numpy(), greedy.cpu().numpy()

    ref = answers(ctx.model)
    out = {"images": len(images), "greedy_steps": steps, "reference": "fp32 weights, same device"}
    for name in ("bf16", "fp16"):
        emb, logits, greedy = answers(cast_weights(ctx.model, DTYPES[name]))
        e, lg = compare(emb, ref[0]), compare(logits, ref[1])
        out[name] = {"embed_cosine_min": e["cosine_min"], "embed_max_abs": e["max_abs"],
                     "logits_cosine_min": lg["cosine_min"], "logits_max_abs": lg["max_abs"],
                     "greedy_token_agreement": float((greedy == ref[2]).mean()),
                     "greedy_sequences_identical": float((greedy == ref[2]).all(1).mean()),
                     "all_finite": bool(np.isfinite(emb).all() and np.isfinite(logits).all())}
    return out


def stage_onnx(ctx: Context) -> dict:
    import onnxruntime as ort
    from pixdeploy.export.onnx_export import export_graph, graph_specs
    from pixdeploy.export.parity import compare

    from benchmarks.timing import interleaved
    from pixdeploy.sequence import image_prompt

    p = ctx.plan
    model = copy.deepcopy(ctx.model).float().cpu().eval()
    available = ort.get_available_providers()
    providers = [x for x in ("CUDAExecutionProvider", "CPUExecutionProvider") if x in available]
    out = {"onnxruntime": ort.__version__, "providers_available": available, "providers_used": providers,
           "graphs": {}}
    n = 2 if p.smoke else 1  # a paper-size image takes seconds through PyTorch on the CPU
    images, sizes = ctx.images[:n], ctx.sizes[:n]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in graph_specs(ctx.cfg):
            if spec.name not in p.onnx_graphs:
                continue
            say(f"onnx: exporting {spec.name}")
            path = Path(tmp) / f"{spec.name}.onnx"
            t0 = time.perf_counter()
            export_graph(model, spec, path)
            export_s = time.perf_counter() - t0
            sess = ort.InferenceSession(str(path), providers=providers)
            if spec.name == "image_encoder":
                feed = {"images": images, "sizes": sizes}
                with torch.no_grad():
                    ref_fn = lambda: model.encode_images(torch.from_numpy(images), torch.from_numpy(sizes)).numpy()
            else:
                # A real prefill: the image's window embeddings inside the prompt.
                prompt = torch.tensor([image_prompt(ctx.cfg.n_windows, ctx.tokenizer.encode(PROMPT))] * n)
                with torch.no_grad():
                    summaries = model.encode_images(torch.from_numpy(images), torch.from_numpy(sizes))
                    embeds = model.embed(prompt, summaries).numpy()
                cache = {i.name: np.zeros([n, *i.shape[1:]], np.float32) for i in sess.get_inputs()
                         if i.name.startswith("past_")}
                feed = {"embeds": embeds, "input_pos": np.arange(embeds.shape[1]), **cache}

                def ref_fn(embeds=embeds):
                    empty = model.empty_cache(n)
                    h, _ = model.decode(torch.from_numpy(embeds), empty, torch.arange(embeds.shape[1]))
                    return model.logits(h[:, -1]).numpy()
            got = sess.run(None, feed)[0]
            with torch.no_grad():
                want = ref_fn()
                timed = interleaved({"onnxruntime": lambda s=sess, f=feed: s.run(None, f), "torch_cpu_eager": ref_fn},
                                    iters=3 if not p.smoke else p.iters, warmup=1)
            out["graphs"][spec.name] = {"export_s": export_s, "batch": n, "vs_torch_fp32_cpu": compare(got, want),
                                        "timing": timed, "speedup_vs_torch_cpu_p50":
                                        timed["torch_cpu_eager"]["p50_ms"] / timed["onnxruntime"]["p50_ms"]}
    if "CUDAExecutionProvider" not in available:
        out["note"] = "onnxruntime-gpu is not installed: the graphs ran on onnxruntime's CPU provider"
    return out
