"""Image encoder: onnxruntime CPU vs PyTorch eager CPU, fp32, on real images.

    python -m benchmarks.encoder_cpu --presets tiny small --batch 8

Exports each preset's image encoder (seeded weights; speed does not depend on their values), checks the
two agree, then times both interleaved. Goal: onnxruntime at least 1.5x faster. Writes
results/encoder_cpu.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pixdeploy.export.onnx_export import export_graph, graph_specs
from pixdeploy.export.parity import default_parity_images

from benchmarks.timing import interleaved, machine, write
from pixdeploy.config import preset
from pixdeploy.folding import prepare_batch
from pixdeploy.model import PixTokenLM


def bench(name: str, batch: int, iters: int) -> dict:
    cfg = preset(name)
    torch.manual_seed(0)
    model = PixTokenLM(cfg).eval()
    real = default_parity_images()
    images, sizes = prepare_batch([real[i % len(real)] for i in range(batch)], cfg.image_size)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "image_encoder.onnx"
        export_graph(model, graph_specs(cfg)[0], path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ti, ts = torch.from_numpy(images), torch.from_numpy(sizes)
    with torch.no_grad():
        ref = model.encode_images(ti, ts).numpy()
    got = sess.run(None, {"images": images, "sizes": sizes})[0]
    max_abs = float(np.abs(got - ref).max())

    def eager():
        with torch.no_grad():
            model.encode_images(ti, ts)

    res = interleaved({"torch_eager": eager,
                       "onnxruntime": lambda: sess.run(None, {"images": images, "sizes": sizes})}, iters)
    return {"preset": name, "batch": batch, "pixels_per_image": cfg.image_size**2, "max_abs_diff": max_abs,
            "results": res, "speedup_p50": res["torch_eager"]["p50_ms"] / res["onnxruntime"]["p50_ms"],
            "speedup_p90": res["torch_eager"]["p90_ms"] / res["onnxruntime"]["p90_ms"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    rows = [bench(p, args.batch, args.iters) for p in args.presets]
    write("encoder_cpu", {"machine": machine(), "runs": rows})
    print(f"{'preset':8}{'torch p50':>11}{'ort p50':>10}{'ort p90':>10}{'ort p99':>10}"
          f"{'speedup p50':>13}{'max|diff|':>11}")
    for r in rows:
        t, o = r["results"]["torch_eager"], r["results"]["onnxruntime"]
        print(f"{r['preset']:8}{t['p50_ms']:>9.1f}ms{o['p50_ms']:>8.1f}ms{o['p90_ms']:>8.1f}ms{o['p99_ms']:>8.1f}ms"
              f"{r['speedup_p50']:>12.2f}x{r['max_abs_diff']:>11.1e}")


if __name__ == "__main__":
    main()
