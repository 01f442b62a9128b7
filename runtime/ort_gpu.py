"""onnxruntime on a GPU (``pip install onnxruntime-gpu``): I/O binding on the CUDA execution provider.

With plain ``session.run`` every decode step would copy the whole KV cache to the host and back. With
I/O binding, the cache outputs the bundle records (``present_*``) are allocated by onnxruntime on the
session's device and handed back as `OrtValue`s; fed in as the next step's cache inputs they are bound
where they lie. Everything else
(logits, embeddings) comes back as numpy. The same code runs on the CPU provider, which is how it is
tested on machines without a GPU.
"""

from __future__ import annotations

import numpy as np
from pixdeploy.runtime.backends import OnnxRuntimeRunner


class OnnxRuntimeBoundRunner(OnnxRuntimeRunner):
    """`OnnxRuntimeRunner` whose ``keep`` outputs (the KV cache the bundle records) stay on the device
    between calls, bound where they lie when fed back."""

    @property
    def device_type(self) -> str:
        return "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"

    def infer_impl(self, feed: dict) -> dict:
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feed.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, self.device_type if name in self.keep else "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: value if name in self.keep else value.numpy() for name, value in zip(self.output_names, values)}
