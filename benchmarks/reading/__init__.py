"""Does it read small text? Pixel tokens against a patch-ViT encoder of the same size.

    python -m benchmarks.reading
"""
