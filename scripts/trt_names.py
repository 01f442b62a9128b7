"""Record which names each TensorRT Python API version has: export/trt_names.json.

    python scripts/trt_names.py                       # pip-downloads the bindings wheels listed in WHEELS
    python scripts/trt_names.py --wheel a.whl --wheel b.whl

The tests check every ``tensorrt`` name pixdeploy uses against that file (tests/export/test_trt_names.py),
with no TensorRT and no network. The names come from NVIDIA's own bindings wheels on PyPI: each wheel's
``tensorrt.so`` is imported in a child process against stub ``libnvinfer``/``libnvonnxparser``/
``libnvinfer_plugin`` libraries (the nine C entry points it links, each returning null), which is enough
for pybind11 to register every class and enum; nothing is built or run. Needs a C compiler and a Python of
the wheels' ABI (cp311 here: the wheels are per Python version, the names are not).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "export" / "trt_names.json"
# The TensorRT versions pixdeploy claims: the export targets 10.3 and 10.15, and 11.x (its first and newest on PyPI).
WHEELS = ["tensorrt-cu12-bindings==10.3.0", "tensorrt-cu12-bindings==10.15.1.29", "tensorrt-cu13-bindings==11.0.0.114",
          "tensorrt-cu13-bindings==11.4.0.106"]
# What is recorded: every member of these enums, every public attribute of these classes, and the module's
# top-level names. Add here what new code uses, then run again.
ENUMS = ["BuilderFlag", "NetworkDefinitionCreationFlag", "OnnxParserFlag", "TacticSource", "ProfilingVerbosity",
         "MemoryPoolType", "LayerType", "TensorIOMode", "LayerInformationFormat", "DataType"]
CLASSES = ["Logger", "Runtime", "ICudaEngine", "IExecutionContext", "EngineInspector", "INetworkDefinition", "ILayer",
           "IPluginRegistry"]
STUB_SYMBOLS = ["createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                "createNvOnnxParserRefitter_INTERNAL", "createNvOnnxParser_INTERNAL", "getBuilderPluginRegistry",
                "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins"]

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorrt_bindings as trt
enums, classes = json.loads(sys.argv[2]), json.loads(sys.argv[3])
public = lambda obj: sorted(n for n in dir(obj) if not n.startswith("_"))
nptype = {}
for name in trt.DataType.__members__:
    try:
        nptype[name] = np.dtype(trt.nptype(getattr(trt.DataType, name))).name
    except TypeError:
        pass
print(json.dumps({"version": trt.__version__, "module": public(trt),
                  "enums": {e: sorted(getattr(trt, e).__members__) for e in enums if hasattr(trt, e)},
                  "classes": {c: public(getattr(trt, c)) for c in classes if hasattr(trt, c)},
                  "nptype": nptype}))
"""


def stub_libraries(folder: Path) -> None:
    """libnvinfer/libnvonnxparser/libnvinfer_plugin .so.10 and .so.11 exporting the symbols tensorrt.so links."""
    source = folder / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in STUB_SYMBOLS))
    for major in (10, 11):
        for lib in ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin"):
            subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / f"{lib}.so.{major}"), str(source)],
                           check=True)


def read_wheel(wheel: Path, work: Path, stubs: Path) -> dict:
    target = work / wheel.stem
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{stubs}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    run = subprocess.run([sys.executable, "-c", PROBE, str(target), json.dumps(ENUMS), json.dumps(CLASSES)],
                         capture_output=True, text=True, env=env)
    if run.returncode:
        sys.exit(f"{wheel.name}: could not read its names: {run.stderr.strip().splitlines()[-1:]}")
    names = json.loads(run.stdout)
    return {"wheel": wheel.name, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(), **names}


def download(specs: list, folder: Path) -> list:
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    for spec in specs:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", py, "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "-d", str(folder), spec], check=True)
    return sorted(folder.glob("*.whl"))


def dump(value, indent: str = "") -> str:
    """JSON with one line per list (the file is read by people reviewing a change too)."""
    if isinstance(value, dict):
        inner = indent + " "
        items = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return json.dumps(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", action="append", type=Path, help="a bindings wheel (default: download WHEELS)")
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheels = args.wheel or download(WHEELS, work / "wheels")
        (work / "stubs").mkdir()
        stub_libraries(work / "stubs")
        versions = {}
        for wheel in wheels:
            entry = read_wheel(wheel, work / "x", work / "stubs")
            versions[entry.pop("version")] = entry
    table = {"generated_by": "scripts/trt_names.py", "source": "tensorrt*-bindings wheels from PyPI (pypi.org)",
             "versions": dict(sorted(versions.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]))}
    args.out.write_text(dump(table) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: TensorRT {', '.join(table['versions'])}")


if __name__ == "__main__":
    main()
