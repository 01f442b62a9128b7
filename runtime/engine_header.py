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
MAX_DEPTH = 16  # a header nests a few levels (profiles -> shapes -> min/opt/max); deeper is not one of ours
MAX_DIM = (1 << 31) - 1  # TensorRT's dims are int32
MAX_ENGINE_BATCH = 1 << 16  # what Triton and the runtimes take as a batch (export.triton.MAX_BATCH_LIMIT)
MAX_PROFILES = 8
MAX_PLAN_BYTES = 1 << 40
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
GRAPH_NAMES = ("image_encoder", "decoder")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CC = re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
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
    from pixdeploy.jsonfile import BadJson, loads

    try:
        header = loads(blob)  # strict: UTF-8, no NaN, no number past 64 bits, nesting bounded by the parser
    except BadJson as e:
        raise EngineError(f"{path} is damaged (header {e})") from None
    if _depth(header) > MAX_DEPTH:
        raise EngineError(f"{path} is damaged (header nested deeper than {MAX_DEPTH} levels)")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EngineError(f"{path} is not a pixdeploy engine")
    if header.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path} has engine format version {header.get('format_version')}; this pixdeploy "
                          f"reads {FORMAT_VERSION} (rebuild it with `pixdeploy build-engine`)")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise EngineError(f"{path} is damaged (header lacks {', '.join(missing)})")
    problem = header_problem(header)
    if problem is not None:
        raise EngineError(f"{path} is damaged (header {problem})")
    return header


def _depth(doc) -> int:
    """How deeply lists and objects nest in a parsed document (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _is_int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _string(v, limit: int = 256) -> bool:
    return isinstance(v, str) and 0 < len(v) <= limit and v.isprintable()


def header_problem(header: dict) -> str | None:
    """What is wrong with a header's fields, in a few words (None when every field is of its kind and range).
    The schema of what `build-engine` writes; a header is untrusted input like every file of a bundle."""
    if not _string(header["tensorrt"], 64) or re.match(r"^[0-9]+(\.[0-9A-Za-z]+)*$", header["tensorrt"]) is None:
        return f"field 'tensorrt' is {header['tensorrt']!r:.60}, not a TensorRT version"
    if not _string(header["gpu"]):
        return "field 'gpu' is not a GPU name"
    if not isinstance(header["compute_capability"], str) or not _CC.match(header["compute_capability"]):
        return "field 'compute_capability' is not a compute capability (such as 9.0)"
    if header["graph"] not in GRAPH_NAMES:
        return f"field 'graph' is {header['graph']!r:.60}, not one of {', '.join(GRAPH_NAMES)}"
    if not isinstance(header["variant"], str) or not re.match(r"^[a-z0-9][a-z0-9-]{0,63}$", header["variant"]):
        return "field 'variant' is not a variant name"
    if header["precision"] not in PRECISIONS:
        return f"field 'precision' is {header['precision']!r:.60}, not one of {', '.join(PRECISIONS)}"
    for key in ("source_sha256", "plan_sha256"):
        if not isinstance(header[key], str) or not _HEX64.match(header[key]):
            return f"field {key!r} is not a sha256"
    if not _is_int(header["plan_bytes"], 0, MAX_PLAN_BYTES):
        return "field 'plan_bytes' is not a size in bytes"
    if not _string(header["producer"]):
        return "field 'producer' is not a producer name"
    if "max_batch" in header and not _is_int(header["max_batch"], 1, MAX_ENGINE_BATCH):
        return f"field 'max_batch' is {header['max_batch']!r:.40}, not a batch in 1..{MAX_ENGINE_BATCH}"
    if "version_compatible" in header and not isinstance(header["version_compatible"], bool):
        return "field 'version_compatible' is not true or false"
    if "plugins" in header and not (isinstance(header["plugins"], list)
                                    and all(_string(p) and "/" not in p for p in header["plugins"])):
        return "field 'plugins' is not a list of library file names"
    return _profiles_problem(header["profiles"])


def _profiles_problem(profiles) -> str | None:
    """Profiles: 1..MAX_PROFILES objects, each {"name", "shapes": {input: [min, opt, max]}}, every shape a list of
    int32 dims of one rank with min <= opt <= max, the same inputs in every profile, a batch (first dim) of
    1..MAX_ENGINE_BATCH where the inputs share one."""
    if not isinstance(profiles, list) or not 1 <= len(profiles) <= MAX_PROFILES:
        return f"field 'profiles' is not a list of 1..{MAX_PROFILES} optimization profiles"
    names = None
    for i, p in enumerate(profiles):
        if not isinstance(p, dict) or not _string(p.get("name"), 64) or not isinstance(p.get("shapes"), dict) \
                or not 1 <= len(p["shapes"]) <= 256:
            return f"profile {i} is not an object with a name and the shapes of its inputs"
        if names is not None and set(p["shapes"]) != names:
            return f"profile {i} names other inputs than profile 0"
        names = set(p["shapes"])
        for tensor, shape in p["shapes"].items():
            if not isinstance(tensor, str) or not _NAME.match(tensor):
                return f"profile {i} names the input {tensor!r:.60}, not a tensor name"
            if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, list) for s in shape)
                    and 1 <= len(shape[0]) <= 8 and len({len(s) for s in shape}) == 1
                    and all(_is_int(d, 0, MAX_DIM) for s in shape for d in s)):
                return (f"profile {i} input {tensor}: not [min, opt, max] shapes of one rank with dims in "
                        f"0..{MAX_DIM}")
            if any(not a <= b <= c for a, b, c in zip(*shape)):
                return f"profile {i} input {tensor}: min, opt and max are not in order"
        firsts = {shape[2][0] for shape in p["shapes"].values()}
        if len(firsts) == 1 and not 1 <= next(iter(firsts)) <= MAX_ENGINE_BATCH and \
                len(p["shapes"]) > 1:
            return f"profile {i}: a batch of {next(iter(firsts))}, past {MAX_ENGINE_BATCH}"
    return None


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
