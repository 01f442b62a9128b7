"""pixdeploy engine files: a length-prefixed JSON header, then TensorRT's serialized plan.

    b"PXDTRT1\\n" | uint32 little-endian header length | header JSON (utf-8) | plan bytes

A plan has no field for user metadata, and deserializing one built for another TensorRT or GPU fails
deep inside TensorRT (or worse). The header says what the plan is — TensorRT version, GPU and compute
capability, graph, variant and precision, optimization profiles, the source graph's sha256, the plan's
own length and sha256, the pixdeploy version — so a loader refuses a wrong or damaged file with one
line before TensorRT sees it. Plain Python: no torch, numpy or TensorRT needed to read it.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

from pixdeploy.errors import PixdeployError

MAGIC = b"PXDTRT1\n"
FORMAT = "pixdeploy-engine"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # a header is a few KB; anything larger is not one of ours
REQUIRED = ("format", "format_version", "tensorrt", "gpu", "compute_capability", "graph", "variant", "precision",
            "profiles", "source_sha256", "plan_bytes", "plan_sha256", "producer")


class EngineError(PixdeployError):
    """An engine file is damaged, foreign, or built for another GPU or TensorRT version."""


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric tails ('10.15.1.post1') are dropped."""
    out = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    if not out:
        raise EngineError(f"cannot read TensorRT version {version!r}")
    return tuple(out)


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': the GPU part of an engine folder's name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def engine_dir_name(gpu_name: str, trt_version: str) -> str:
    """``<gpu>-trt<version>``: one GPU model and exact TensorRT version (the timing cache's name; an engine
    folder adds the variant, `pixdeploy.runtime.bundle.engine_set_name`)."""
    return f"{gpu_slug(gpu_name)}-trt{trt_version}"


def encode(header: dict, plan: bytes) -> bytes:
    """Header (completed with the plan's length and sha256) + plan, as one byte string."""
    header = {**header, "format": FORMAT, "format_version": FORMAT_VERSION,
              "plan_bytes": len(plan), "plan_sha256": hashlib.sha256(plan).hexdigest()}
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise ValueError(f"engine header lacks {missing}")
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    return MAGIC + struct.pack("<I", len(blob)) + blob + plan


def write_engine(path: Path, header: dict, plan: bytes) -> None:
    """Write atomically (temporary sibling renamed into place)."""
    from pixdeploy.files import staged_file

    data = encode(header, plan)
    with staged_file(Path(path)) as tmp:
        tmp.write_bytes(data)


def _read_prefix(f, path) -> dict:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise EngineError(f"{path} is not a pixdeploy engine (no header; build it with `pixdeploy build-engine`)")
    raw = f.read(4)
    if len(raw) != 4:
        raise EngineError(f"{path} is truncated (header length missing)")
    (n,) = struct.unpack("<I", raw)
    if n > MAX_HEADER_BYTES:
        raise EngineError(f"{path} is damaged (header length {n} bytes)")
    blob = f.read(n)
    if len(blob) != n:
        raise EngineError(f"{path} is truncated (header cut short)")
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EngineError(f"{path} is damaged (header is not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EngineError(f"{path} is not a pixdeploy engine")
    if header.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path} has engine format version {header.get('format_version')}; this pixdeploy "
                          f"reads {FORMAT_VERSION} (rebuild it with `pixdeploy build-engine`)")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise EngineError(f"{path} is damaged (header lacks {', '.join(missing)})")
    return header


def read_header(path) -> dict:
    """The header only (cheap: the plan is not read)."""
    try:
        with open(path, "rb") as f:
            return _read_prefix(f, path)
    except FileNotFoundError:
        raise EngineError(f"no engine at {path}") from None


def read_engine(path) -> tuple[dict, bytes]:
    """Header and plan; the plan's length and sha256 are checked, so a truncated or altered file never
    reaches TensorRT's deserializer."""
    try:
        with open(path, "rb") as f:
            header = _read_prefix(f, path)
            plan = f.read()
    except FileNotFoundError:
        raise EngineError(f"no engine at {path}") from None
    if len(plan) != header["plan_bytes"]:
        raise EngineError(f"{path} is truncated ({len(plan)} of {header['plan_bytes']} plan bytes)")
    if hashlib.sha256(plan).hexdigest() != header["plan_sha256"]:
        raise EngineError(f"{path} is damaged (plan does not match its sha256)")
    return header, plan


def check_runs_here(header: dict, path, trt_version: str, compute_capability: str) -> None:
    """Refuse an engine this TensorRT and GPU cannot run. A standard plan needs the very TensorRT build it
    came from; a version-compatible one runs on that release or a later one (TensorRT's rule: 10.x VC
    plans load in 11.x runtimes). Either needs the GPU's compute capability (no hardware-compatibility
    mode is used)."""
    built, cc = header["tensorrt"], header["compute_capability"]
    if cc != compute_capability:
        raise EngineError(f"{path} was built for a GPU of compute capability {cc} ({header['gpu']}); this GPU is "
                          f"{compute_capability}: run `pixdeploy build-engine` on this machine")
    if header.get("version_compatible"):
        if version_tuple(trt_version) < version_tuple(built):
            raise EngineError(f"{path} was built with TensorRT {built}; this is the older {trt_version}: "
                              "rebuild it here with `pixdeploy build-engine`")
    elif built != trt_version:
        raise EngineError(f"{path} was built with TensorRT {built}; this is TensorRT {trt_version}: rebuild it "
                          "here with `pixdeploy build-engine` (or build with --version-compatible)")
