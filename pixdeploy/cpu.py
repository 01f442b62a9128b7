"""The CPU's instruction-set class for int8 and bf16 work, read from /proc/cpuinfo (torch-free).

The class decides which int8 matrix-multiply scheme is fastest (what `quantize --target cpu` measured is
recorded with the class it was measured on): one instruction per int8 multiply-add with AVX-512 VNNI or
AVX-VNNI (and with the dot-product instructions on Arm), three with plain AVX2.
"""

from __future__ import annotations

import platform

# (cpuinfo flag, class), first match wins: the best int8 dot product the CPU has.
X86_CLASSES = (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"))
ARM_CLASSES = (("asimddp", "NEON dot-product"),)
UNKNOWN = "unknown"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU listed (x86 ``flags``, aarch64 ``Features``)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def isa_class(cpuinfo: str | None = None) -> str:
    """'AVX-512 VNNI', 'AVX-VNNI', 'AVX2', 'NEON dot-product', or 'unknown' (an x86 CPU without AVX2, an Arm one
    without dot-product, or no /proc/cpuinfo), for this machine or for the text of a /proc/cpuinfo."""
    flags = cpu_flags(cpuinfo)
    for flag, name in X86_CLASSES + ARM_CLASSES:
        if flag in flags:
            return name
    return UNKNOWN


def has_bf16(cpuinfo: str | None = None) -> bool:
    """The CPU computes in bf16 natively (x86 AVX512_BF16 or AMX-BF16; Arm BF16 extension)."""
    flags = cpu_flags(cpuinfo)
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def describe() -> str:
    """'AVX-512 VNNI (x86_64)': the class and the architecture, for reports."""
    return f"{isa_class()} ({platform.machine()})"
