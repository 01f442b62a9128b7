"""The CPU's instruction-set class, from /proc/cpuinfo texts of real processors and from this machine."""

import platform

import pytest

from pixdeploy.cpu import CLASSES, classify, cpu_class, cpuinfo_flags, numpy_flags

# Trimmed /proc/cpuinfo lines of real processors (the flags that decide, among others that do not).
HASWELL = "flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2"
ZEN3 = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 sha_ni vaes vpclmulqdq"
SKYLAKE_X = "flags\t\t: sse4_2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
ICE_LAKE = "flags\t\t: avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi avx512_vnni avx512_bitalg"
ZEN4 = ("flags\t\t: avx avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi "
        "avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq")
ALDER_LAKE = "flags\t\t: avx avx2 fma avx_vnni sha_ni"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
NEHALEM = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
GRAVITON2 = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics " \
            "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
CORTEX_A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"


@pytest.mark.parametrize("text, arch, expected", [
    (HASWELL, "x86_64", "avx2"), (ZEN3, "x86_64", "avx2"), (SKYLAKE_X, "x86_64", "avx512"),
    (ICE_LAKE, "x86_64", "avx512-vnni"), (ZEN4, "x86_64", "avx512-vnni"), (ALDER_LAKE, "x86_64", "avx-vnni"),
    (SAPPHIRE_RAPIDS, "x86_64", "amx"), (NEHALEM, "x86_64", "sse"), (GRAVITON2, "aarch64", "neon-dotprod"),
    (CORTEX_A72, "aarch64", "neon"), (GRAVITON2, "arm64", "neon-dotprod"), ("", "riscv64", "other"),
])
def test_class_of_real_processors(text, arch, expected):
    assert classify(cpuinfo_flags(text), arch) == expected
    assert expected in CLASSES


def test_this_machine_has_a_class_and_numpy_agrees():
    """/proc/cpuinfo (where there is one) and numpy's own detection name the same class here (numpy
    does not detect AMX, nor AVX-VNNI before numpy 2: there it names the class below)."""
    here = cpu_class()
    assert here in CLASSES
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        assert here != "other"
        below = {"amx": "avx512-vnni", "avx-vnni": "avx2"}
        assert classify(numpy_flags(), platform.machine()) in (here, below.get(here))
