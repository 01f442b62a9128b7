"""Export profiles: which operators a bundle's graphs may use, chosen by where they will run.

    pixdeploy export CHECKPOINT -o bundle/ --target tensorrt-10.3

One table, read by the exporter (which lowering to apply), the manifest (what the bundle suits) and
`build-engine` (refuse a bundle the installed TensorRT cannot parse, before parsing). Torch- and
onnx-free, so a Jetson with only the runtime installed can read it.

Why three: TensorRT 10.3 (JetPack 6.1/6.2, most Jetson Orin boards) has no ONNX importer for the opset-23
``Attention`` (added in 10.14) or ``RMSNormalization`` (10.15) and reads opsets 9..20, so its graphs
write both out in elementary ops; TensorRT 10.15+ and 11.x import the fused operators, provided every
``Attention`` input is 4-D; onnxruntime runs today's graphs as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixdeploy.runtime.engine_header import version_tuple

from pixdeploy.errors import PixdeployError


@dataclass(frozen=True)
class ExportProfile:
    name: str
    opset: int  # default-domain opset of every graph and function body
    ir_version: int
    fused: bool  # opset-23 Attention / RMSNormalization kept (True) or written out in elementary ops
    attention_4d: bool  # Attention masks made 4-D (TensorRT's importer rejects other ranks)
    tensorrt_min: str | None  # oldest TensorRT whose parser reads these graphs; None: not for TensorRT
    suits: str  # one line for the manifest, `inspect` and the README

    def to_dict(self) -> dict:
        return {"name": self.name, "opset": self.opset, "fused_attention": self.fused,
                "tensorrt_min": self.tensorrt_min, "suits": self.suits}


PROFILES = {
    "onnxruntime": ExportProfile(
        "onnxruntime", opset=23, ir_version=11, fused=True, attention_4d=False, tensorrt_min=None,
        suits="onnxruntime on CPU or CUDA"),
    "tensorrt-10.3": ExportProfile(
        # IR 10: what TensorRT 10.3's ONNX 1.16 parser and NVIDIA ModelOpt (IR <= 10) read.
        "tensorrt-10.3", opset=20, ir_version=10, fused=False, attention_4d=False, tensorrt_min="10.3",
        suits="TensorRT 10.3-10.14 (JetPack 6.1/6.2; x86 servers), also parses on later TensorRT"),
    "tensorrt-10.15": ExportProfile(
        "tensorrt-10.15", opset=23, ir_version=11, fused=True, attention_4d=True, tensorrt_min="10.15",
        suits="TensorRT 10.15+ and 11.x (JetPack 7.2.2+ with TensorRT 11.4.1+; x86 servers): fused attention"),
}
DEFAULT_PROFILE = "onnxruntime"


def get_profile(name: str) -> ExportProfile:
    if name not in PROFILES:
        raise PixdeployError(f"unknown export target {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


def profile_for_tensorrt(trt_version: str) -> ExportProfile:
    """The profile to export for a TensorRT version: fused operators where its parser has them."""
    if version_tuple(trt_version)[:2] >= version_tuple(PROFILES["tensorrt-10.15"].tensorrt_min):
        return PROFILES["tensorrt-10.15"]
    return PROFILES["tensorrt-10.3"]


def check_parsable(profile: ExportProfile, trt_version: str, bundle) -> None:
    """Refuse, before TensorRT is touched, a bundle whose graphs this TensorRT cannot parse."""
    if version_tuple(trt_version)[:2] < version_tuple(PROFILES["tensorrt-10.3"].tensorrt_min)[:2]:
        raise PixdeployError(f"TensorRT {trt_version} is older than any export target supports (10.3 is the "
                             "oldest: JetPack 6.1+); upgrade TensorRT")
    want = profile_for_tensorrt(trt_version).name
    if profile.tensorrt_min is None:
        raise PixdeployError(f"{bundle} was exported for {profile.suits} (--target {profile.name}); "
                             f"re-export it for TensorRT {trt_version} with --target {want}")
    if version_tuple(trt_version)[:2] < version_tuple(profile.tensorrt_min)[:2]:
        raise PixdeployError(f"{bundle} was exported with --target {profile.name}, which TensorRT {trt_version} "
                             f"cannot parse (needs {profile.tensorrt_min}+); re-export it with --target {want}")
