"""pixdeploy: pixel-token language models from PyTorch to the edge."""

from pixdeploy import telemetry as _telemetry

_telemetry.disable_onnxruntime()  # before any pixdeploy module imports onnxruntime (pixdeploy.telemetry says why)

__version__ = "0.1.0"
