"""The bundle's typed records: a KV-cache pair of the decoder and an engine set, each with its manifest form."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixdeploy.text import printable


@dataclass(frozen=True)
class CachePair:
    """One KV-cache tensor of the decoder: fed as ``past``, returned as ``present``."""

    past: str
    present: str
    dtype: str
    shape: tuple  # symbolic dims are strings ("batch")

    def to_dict(self) -> dict:
        return {"past": self.past, "present": self.present, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class EngineSet:
    """One `build-engine` run recorded in the manifest: a folder of engines for one variant, GPU and TensorRT."""

    name: str  # folder under engines/
    variant: str
    tensorrt: str
    gpu: str
    compute_capability: str
    export_profile: str
    max_batch: int
    version_compatible: bool = False
    plugins: tuple = ()  # file names of the plugin libraries it was built with (never loaded from the bundle)
    files: dict = field(default_factory=dict)  # graph -> path inside the bundle

    def to_dict(self) -> dict:
        return {"variant": self.variant, "tensorrt": self.tensorrt, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "export_profile": self.export_profile,
                "max_batch": self.max_batch, "version_compatible": self.version_compatible,
                "plugins": list(self.plugins), "files": dict(self.files)}

    def describe(self) -> str:
        return printable(f"{self.name}: variant {self.variant}, TensorRT {self.tensorrt}"
                         f"{' (version-compatible)' if self.version_compatible else ''} on {self.gpu} "
                         f"(sm {self.compute_capability}), batch 1..{self.max_batch}")


def engine_set_name(gpu_slug: str, trt_version: str, variant: str) -> str:
    """``<gpu>-trt<version>-<variant>``: fp32 and int8 engines for one GPU and TensorRT live side by side."""
    return f"{gpu_slug}-trt{trt_version}-{variant}"
