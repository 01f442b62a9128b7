"""What a measurement ran on and what it held: CPU, GPUs, library versions, peak host and GPU memory.

A latency means little without them: a bench report carries them, so that a comparison can tell a slower run
from a run on another machine or with other libraries. Standard library only; nvidia-smi where it is installed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

# ---- memory ----


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux: clear_refs 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Resident-set high-water mark since the last reset (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole-process peak, never reset
    except ImportError:
        return None


def nvidia_smi(*query: str) -> list[str]:
    """nvidia-smi's CSV lines for ``query`` (no header, no units); none without an NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def process_gpu_memory_mb() -> float | None:
    """GPU memory this process holds now (nvidia-smi), or None without an NVIDIA driver."""
    used = [float(u) for p, u in (line.split(",") for line in nvidia_smi("--query-compute-apps=pid,used_memory")
                                  if "," in line)
            if p.strip() == str(os.getpid())]
    return sum(used) if used else None


# ---- what ran where ----


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    return nvidia_smi("--query-gpu=name")


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(), "gpus": gpu_names(),
            "os": platform.platform(), "hostname": platform.node()}


def library_versions(torch: bool = True) -> dict:
    """Installed versions of what a measurement may rest on (torch only when it took part)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("pixdeploy", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt") + (
            ("torch",) if torch else ()):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
