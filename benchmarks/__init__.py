# Imported before any benchmark module: pixdeploy's import switches library telemetry off before a benchmark
# imports onnxruntime (pixdeploy.telemetry says why).
import pixdeploy  # noqa: F401
