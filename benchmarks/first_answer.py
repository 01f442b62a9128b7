"""Time to first answer on a bundle: load a variant and generate one token, in a fresh process per run, and how
many bytes of the bundle were hashed on the way (a command hashes the shared files and the variant it runs).

    python -m benchmarks.first_answer BUNDLE IMAGE [--variants fp32 int8-cpu] [--runs 7]

Run it with two checkouts' Pythons to compare them on one bundle; results print as one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, os, sys, time
t0 = time.perf_counter()
import pixdeploy.runtime.bundle.reader as reader
from pixdeploy.runtime import Pipeline
hashed = [0]
real = reader.sha256
def counting(path):
    hashed[0] += os.path.getsize(path)
    return real(path)
reader.sha256 = counting
t1 = time.perf_counter()
with Pipeline.load(sys.argv[1], device="cpu", variant=sys.argv[2]) as pipe:
    pipe.generate(sys.argv[3], max_new_tokens=1, stop=None)
print(json.dumps({"import_s": t1 - t0, "first_answer_s": time.perf_counter() - t1, "bytes_hashed": hashed[0]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("image")
    ap.add_argument("--variants", nargs="+", default=["fp32"])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    runs = {v: [] for v in args.variants}
    for _ in range(args.runs):  # variants interleaved
        for v in args.variants:
            out = subprocess.run([sys.executable, "-c", CHILD, args.bundle, v, args.image], capture_output=True,
                                 text=True, check=True)
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for v, rs in runs.items():
        print(json.dumps({"variant": v, "runs": len(rs),
                          "first_answer_ms_median": round(1e3 * statistics.median(r["first_answer_s"] for r in rs), 1),
                          "bytes_hashed": rs[0]["bytes_hashed"]}))


if __name__ == "__main__":
    main()
