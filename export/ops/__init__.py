"""Custom ONNX ops of pixdeploy: one module each, holding the ONNX function body (which any runtime can
run), the export-time PyTorch hook that emits the node, and its reference implementation's name.

The domain is declared once here. A runtime with a faster kernel (a TensorRT plugin, an onnxruntime
custom-op library) claims a node by ``domain::name``; every other runtime inlines the function body.
"""

import onnxscript

DOMAIN = "pixdeploy"
VERSION = 1
OPSET = onnxscript.values.Opset(DOMAIN, VERSION)
