"""Triton Python-backend model: one bundle graph (``model.onnx`` beside this file) run by onnxruntime.

Written into a repository by `pixdeploy triton --backend python`, so the whole repository runs on a
Triton server without an onnxruntime backend (CPU-only builds, PyTriton's server). The runner is the
torch-free runtime's own, which checks every feed against the graph's declared inputs.
"""

import json
import os
import site
import sys
from pathlib import Path

# `pixdeploy serve` names the site folders of the Python that has pixdeploy installed; the backend's
# embedded interpreter only knows its base installation. A server whose Python has pixdeploy needs none.
# They go first: a numpy in the base installation must not shadow the one pixdeploy was installed with.
_base_path = list(sys.path)
for _d in filter(None, os.environ.get("PIXDEPLOY_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_d)
sys.path[:] = [p for p in sys.path if p not in _base_path] + _base_path

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from pixdeploy.runtime.backends import OnnxRuntimeRunner  # noqa: E402

from pixdeploy.errors import PixdeployError  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.batched = config.get("max_batch_size", 0) > 0
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        device = "cpu" if args.get("model_instance_kind") == "CPU" else "auto"
        self.runner = OnnxRuntimeRunner.open(path, device)

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        if self.batched and len(feeds) > 1:
            # A dynamic batch: one run over all requests, split back along the batch axis.
            counts = [len(f[self.inputs[0]]) for f in feeds]
            try:
                merged = self.runner.infer({n: np.concatenate([f[n] for f in feeds]) for n in self.inputs})
            except PixdeployError as e:
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))) for _ in requests]
            bounds = np.cumsum(counts)[:-1]
            parts = {n: np.split(merged[n], bounds) for n in self.outputs}
            return [self._response({n: parts[n][i] for n in self.outputs}) for i in range(len(requests))]
        responses = []
        for feed in feeds:
            try:
                responses.append(self._response(self.runner.infer(feed)))
            except PixdeployError as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses

    def _response(self, out):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(out[n])) for n in self.outputs])
