"""Triton serving throughput at several client concurrencies, against the in-process Pipeline.

    python -m benchmarks.serve --bundle BUNDLE [--requests 64] [--concurrency 1 4 16] [--instances 2]

Starts a real Triton server (nvidia-pytriton's tritonserver, `--backend python` repository) on loopback
and sends `pixdeploy_generate` requests over HTTP from N client threads; the baseline is
`Pipeline.generate` in this process, one request at a time, on the same requests, timed in the same
run. Requests are real photographs (scikit-learn's) cropped to different shapes, greedy, a fixed
number of new tokens; every server answer is checked against the Pipeline's.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from pixdeploy.export.triton import RepositoryOptions, write_repository
from pixdeploy.runtime import Pipeline
from pixdeploy.runtime.serve import TritonServer, free_port

from benchmarks.timing import machine, percentiles, write


def photos(n: int) -> list[bytes]:
    from sklearn.datasets import load_sample_images

    out = []
    for i, arr in enumerate(load_sample_images().images[i % 2] for i in range(n)):
        buf = io.BytesIO()
        Image.fromarray(arr[(i * 7) % 200 :, (i * 13) % 300 :]).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def inputs(image: bytes, max_new_tokens: int) -> list:
    a = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    a.set_data_from_numpy(np.array([[image]], dtype=object))
    b = httpclient.InferInput("MAX_NEW_TOKENS", [1, 1], "INT32")
    b.set_data_from_numpy(np.array([[max_new_tokens]], np.int32))
    return [a, b]


def run_clients(url: str, images: list[bytes], tokens: int, concurrency: int) -> tuple[float, list, list]:
    """All requests spread over `concurrency` clients; returns wall seconds, latencies, answers."""
    def client(k):
        with httpclient.InferenceServerClient(url, network_timeout=300, concurrency=1) as c:
            out = []
            for i in range(k, len(images), concurrency):
                t = time.perf_counter()
                text = c.infer("pixdeploy_generate", inputs(images[i], tokens)).as_numpy("TEXT")[0, 0].decode()
                out.append((i, time.perf_counter() - t, text))
            return out

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
    wall = time.perf_counter() - t
    results.sort()
    return wall, [r[1] for r in results], [r[2] for r in results]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--instances", type=int, default=2)
    args = ap.parse_args()
    images = photos(args.requests)
    pipe = Pipeline.load(args.bundle, device="cpu")
    with tempfile.TemporaryDirectory() as d:
        repo = write_repository(args.bundle, Path(d) / "repo",
                                RepositoryOptions(backend="python", instances=args.instances), echo=lambda *_: None)
        with TritonServer(repo, http_port=free_port(), grpc_port=free_port()) as server:
            server.wait_ready(180)
            run_clients(server.http_url, images[:4], args.tokens, 1)  # warm-up: sessions, first requests
            pipe.generate(images[0], max_new_tokens=args.tokens)
            rows = {}
            for n in args.concurrency:
                # Baseline and server alternate per concurrency level, so load on the machine hits both.
                lat = []
                t = time.perf_counter()
                want = []
                for img in images:
                    s = time.perf_counter()
                    want.append(pipe.generate(img, max_new_tokens=args.tokens))
                    lat.append(time.perf_counter() - s)
                base_wall = time.perf_counter() - t
                wall, latencies, got = run_clients(server.http_url, images, args.tokens, n)
                assert got == want, "server answers differ from the Pipeline's"
                rows[n] = {"server_req_per_s": len(images) / wall, "pipeline_req_per_s": len(images) / base_wall,
                           "ratio_to_pipeline": base_wall / wall, "server_latency": percentiles(latencies),
                           "pipeline_latency": percentiles(lat)}
    print(f"{len(images)} requests, {args.tokens} new tokens each, {args.instances} instances per model")
    print("| clients | Triton req/s | Pipeline req/s (1 at a time) | ratio | Triton p50/p90/p99 ms |")
    print("|---|---|---|---|---|")
    for n, r in rows.items():
        s = r["server_latency"]
        print(f"| {n} | {r['server_req_per_s']:.1f} | {r['pipeline_req_per_s']:.1f} | "
              f"{r['ratio_to_pipeline']:.2f}x | {s['p50_ms']:.0f} / {s['p90_ms']:.0f} / {s['p99_ms']:.0f} |")
    write("serve", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": {str(k): v for k, v in rows.items()}})


if __name__ == "__main__":
    main()
