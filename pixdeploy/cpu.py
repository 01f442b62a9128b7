"""The CPU's instruction-set class: which integer matrix kernels onnxruntime (MLAS) runs on it.

Dynamic int8 graphs give other numbers on another class of CPU, not because of a bug but because the
kernels differ in arithmetic: AVX2 and AVX-512 without VNNI multiply u8 x s8 pairs with ``vpmaddubsw``,
which saturates the 16-bit sum of each pair; AVX-512 VNNI, AVX-VNNI, AMX and the Arm dot-product
instructions accumulate exactly in 32 bits. Goldens of int8 graphs, benchmarks of them and the quantize
step name the class they ran on with ``cpu_class()``. Torch-free.

    from pixdeploy.cpu import cpu_class
    cpu_class()  # e.g. 'avx2', 'avx512-vnni', 'neon-dotprod'
"""

from __future__ import annotations

import platform
from functools import lru_cache

# The classes, most capable first within each architecture; each a distinct MLAS int8 kernel family.
CLASSES = {
    "amx": "x86 with AMX int8 tiles (exact 32-bit accumulation)",
    "avx512-vnni": "x86 with AVX-512 VNNI (exact 32-bit accumulation)",
    "avx-vnni": "x86 with AVX-VNNI on 256-bit registers (exact 32-bit accumulation)",
    "avx512": "x86 with AVX-512 BW but no VNNI (16-bit saturating pair sums)",
    "avx2": "x86 with AVX2 (16-bit saturating pair sums)",
    "sse": "x86 without AVX2",
    "neon-dotprod": "aarch64 with the dot-product instructions (sdot/udot, exact 32-bit accumulation)",
    "neon": "aarch64 without the dot-product instructions",
    "other": "another architecture, or flags that could not be read",
}

# numpy's names of the features (``__cpu_features__``) -> the Linux /proc/cpuinfo flag names used here.
_NUMPY_NAMES = {"AVX2": "avx2", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni",
                "ASIMDDP": "asimddp", "ASIMD": "asimd", "NEON": "asimd"}


def classify(flags: set[str] | frozenset[str], arch: str) -> str:
    """The class of a CPU with these feature ``flags`` (Linux /proc/cpuinfo names, lower case) on ``arch``
    (``platform.machine()``)."""
    arch = arch.lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        if "amx_int8" in flags and "amx_tile" in flags:
            return "amx"
        if "avx512_vnni" in flags and "avx512bw" in flags:
            return "avx512-vnni"
        if "avx_vnni" in flags and "avx2" in flags:
            return "avx-vnni"
        if "avx512bw" in flags:
            return "avx512"
        if "avx2" in flags:
            return "avx2"
        return "sse"
    if arch in ("aarch64", "arm64"):
        return "neon-dotprod" if "asimddp" in flags else "neon"
    return "other"


def cpuinfo_flags(text: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def numpy_flags() -> set[str]:
    """The features numpy found at import (it checks what the OS enables too), in /proc/cpuinfo names."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return {_NUMPY_NAMES.get(name, name.lower()) for name, on in features.items() if on}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: /proc/cpuinfo where there is one (Linux), else numpy's detection."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = cpuinfo_flags(f.read())
    except OSError:
        flags = set()
    return frozenset(flags or numpy_flags())


def cpu_class() -> str:
    """This CPU's instruction-set class, one of ``CLASSES``."""
    return classify(cpu_flags(), platform.machine())
