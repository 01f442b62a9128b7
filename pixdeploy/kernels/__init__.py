"""Fused GPU kernels for the PyTorch inference path. Each kernel lives in one module with its entry
point, imports its compiler (Triton) lazily, and has an SDPA reference it is tested against."""
