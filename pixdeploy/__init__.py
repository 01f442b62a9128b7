"""pixdeploy: pixel-token language models from PyTorch to the edge."""

__version__ = "0.1.0"
