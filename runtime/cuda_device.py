"""Which GPU this is, from the CUDA driver API through ctypes (no torch, no extra package).

The driver library (``libcuda.so.1``) ships with every NVIDIA driver, x86 and Jetson alike (where NVML,
the other usual source, does not exist). ``cuDeviceGetName`` and ``cuDeviceGetAttribute`` have kept
their signatures since CUDA 2; attributes 75/76 are the compute capability's major and minor.
"""

from __future__ import annotations

import ctypes

from pixdeploy.errors import PixdeployError

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


def _driver():
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise PixdeployError("no NVIDIA driver here (libcuda.so.1 not found): TensorRT needs an NVIDIA GPU")


def current_gpu(index: int = 0) -> tuple[str, str]:
    """(name, 'major.minor' compute capability) of GPU ``index``."""
    cu = _driver()

    def check(status: int, what: str) -> None:
        if status != 0:
            raise PixdeployError(f"CUDA driver error {status} in {what} (is a GPU visible to this process?)")

    check(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cu.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    check(cu.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(cu.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev), "cuDeviceGetAttribute")
    check(cu.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev), "cuDeviceGetAttribute")
    return name.value.decode("utf-8", "replace"), f"{major.value}.{minor.value}"
