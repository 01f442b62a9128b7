"""The CPU's instruction-set class, from /proc/cpuinfo text."""

import pytest

from pixdeploy.cpu import has_bf16, isa_class

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 {flags}\nbogomips\t: 4800\n\nprocessor\t: 1\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm {flags}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, expected", [
    (X86.format(flags="avx avx2 avx512f avx512_vnni avx512_bf16"), "AVX-512 VNNI"),
    (X86.format(flags="avx avx2 avx_vnni"), "AVX-VNNI"),
    (X86.format(flags="avx avx2 fma"), "AVX2"),
    (X86.format(flags="avx sse4_2"), "unknown"),
    (ARM.format(flags="asimdhp asimddp sve"), "NEON dot-product"),
    (ARM.format(flags="asimdhp"), "unknown"),
    ("", "unknown"),
])
def test_isa_class(text, expected):
    assert isa_class(text) == expected


def test_bf16_flags():
    assert has_bf16(X86.format(flags="avx2 avx512_bf16"))
    assert has_bf16(X86.format(flags="avx2 amx_bf16"))
    assert not has_bf16(X86.format(flags="avx2 avx512_vnni"))


def test_this_machine_has_a_class():
    assert isinstance(isa_class(), str) and isa_class()  # whatever it is; "unknown" where /proc is absent
