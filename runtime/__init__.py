"""Torch-free inference from a bundle (numpy, Pillow, tokenizers and onnxruntime only)."""

from pixdeploy.runtime.bundle import Bundle, BundleError
from pixdeploy.runtime.pipeline import Pipeline

__all__ = ["Bundle", "BundleError", "Pipeline"]
