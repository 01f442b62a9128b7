"""onnxruntime, on the CPU or on CUDA (``pip install onnxruntime-gpu``).

- `OnnxRuntimeRunner`: one session, numpy in and out (the CPU).
- `OnnxRuntimeBoundRunner`: on a GPU provider, with I/O binding. With plain ``session.run`` every decode step
  would copy the whole KV cache to the host and back; with I/O binding, the cache outputs the bundle records
  (``present_*``) are allocated by onnxruntime on the session's device and handed back as `OrtValue`s, bound where
  they lie when fed in as the next step's cache. Everything else (logits, embeddings) comes back as numpy. The
  same code runs on the CPU provider, which is how it is tested on machines without a GPU.
- `FusedDecoderRunner`: a decoder written with onnxruntime's fused CPU operators
  (`pixdeploy.runtime.fused_decoder`), behind the plain decoder's contract.
"""

from __future__ import annotations

import threading

import numpy as np
from pixdeploy.runtime.runner import ORT_TYPES, Runner, declared_inputs

from pixdeploy.errors import PixdeployError


def execution_providers(device: str, available: list[str]) -> list[str]:
    """CUDA (then CPU for what CUDA lacks) where asked for and present, else the CPU alone. Never onnxruntime's
    TensorRT execution provider: onnxruntime-gpu lists it even where TensorRT is not installed (every session
    would print "EP Error ... Falling back"), and where it is, it builds a new engine for every input shape on
    first use. TensorRT runs through `--backend tensorrt`, from engines built once."""
    if device == "cpu" or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


NO_SPINNING = ("session.intra_op.allow_spinning", "0")  # threads block when idle instead of spinning


def open_session(path, device: str = "auto"):
    """An onnxruntime session on ``device`` (cpu, cuda, auto); CUDA asked for and absent is an error."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PixdeployError("onnxruntime is not installed: pip install 'pixdeploy[onnx]' "
                             "(or onnxruntime-gpu on a CUDA machine)") from None
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise PixdeployError("device cuda asked for, but this onnxruntime has no CUDA provider "
                             "(install onnxruntime-gpu)")
    providers = execution_providers(device, available)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # A pipeline alternates two sessions (encoder, then decoder steps): a session's worker threads that spin
    # waiting for work after a run take cores from the other. Measured at batch 1 on 2 cores (small, 16 tokens):
    # generate 147.6 -> 134.4 ms on the fp32 graphs, 104.6 -> 96.9 ms on int8-cpu with the fused decoder.
    opts.add_session_config_entry(NO_SPINNING[0], NO_SPINNING[1])
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for damaged graphs
        raise PixdeployError(f"cannot load {path}: {str(e).splitlines()[0][:300]}") from None


class OnnxRuntimeRunner(Runner):
    """One onnxruntime session; outputs come back as numpy arrays."""

    def __init__(self, session, keep=frozenset()):
        self.session = session
        self.inputs = {i.name: (ORT_TYPES.get(i.type), tuple(i.shape)) for i in session.get_inputs()}
        self.output_names = [o.name for o in session.get_outputs()]
        self.providers = session.get_providers()
        self.keep = frozenset(keep)

    @classmethod
    def open(cls, path, device: str = "auto", keep=frozenset()) -> OnnxRuntimeRunner:
        """The runner for a graph file: on a GPU provider with I/O binding (`OnnxRuntimeBoundRunner`), so the
        ``keep`` outputs (the KV cache) stay on the device between steps."""
        session = open_session(path, device)
        if session.get_providers()[0] == "CPUExecutionProvider":
            return cls(session, keep)
        return OnnxRuntimeBoundRunner(session, keep)

    def infer_impl(self, feed: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(None, feed)))

    def close(self) -> None:
        self.session = None


LOGITS = "logits"  # the decoder's output, in the plain and the fused graph alike


class FusedDecoderRunner(Runner):
    """A fused decoder graph (`pixdeploy.runtime.fused_decoder`: onnxruntime's CPU contrib operators, one KV buffer
    per cache tensor written in place) with the plain decoder's inputs and outputs."""

    def __init__(self, session, plain_signature, cache_pairs: list, cfg):
        from pixdeploy.runtime.fused_decoder import fused_cache_names

        self.session = session
        self.inputs = declared_inputs(plain_signature)
        self.output_names = list(plain_signature.outputs)
        self.pairs = list(zip(cache_pairs, fused_cache_names(cfg.n_layers)))  # (plain pair, (past, present))
        self.keep = frozenset(p.present for p in cache_pairs)
        self._bound = None  # the binding of the conversation last run (`_Bound`)
        self._lock = threading.Lock()  # one binding: one run at a time

    @classmethod
    def open(cls, path, plain_signature, cache_pairs: list, cfg) -> FusedDecoderRunner:
        from pixdeploy.runtime.fused_decoder import check_fused

        session = open_session(path, "cpu")
        check_fused({i.name: (ORT_TYPES.get(i.type), list(i.shape)) for i in session.get_inputs()},
                    {o.name: (ORT_TYPES.get(o.type), list(o.shape)) for o in session.get_outputs()}, cfg, path)
        if len(cache_pairs) != 2 * cfg.n_layers:
            raise PixdeployError(f"{path}: the bundle records {len(cache_pairs)} cache pairs, the fused decoder has "
                                 f"{2 * cfg.n_layers}")
        return cls(session, plain_signature, cache_pairs, cfg)

    @classmethod
    def open_in(cls, bundle, path) -> FusedDecoderRunner:
        """The fused decoder graph at ``path``, held to ``bundle``'s decoder contract (signature, cache pairs,
        config)."""
        return cls.open(path, bundle.signatures["decoder"], bundle.cache_pairs(), bundle.config)

    def infer_impl(self, feed: dict) -> dict:
        import onnxruntime as ort

        pos = np.asarray(feed["input_pos"])
        start, tokens = int(pos[0]), len(pos)
        if not np.array_equal(pos, np.arange(start, start + tokens)):
            raise PixdeployError("the fused decoder takes consecutive positions from its cache's length on")
        embeds = np.ascontiguousarray(feed["embeds"], dtype=np.float32)
        batch = embeds.shape[0]
        caches = [feed[plain.past] for plain, _ in self.pairs]
        if not all(isinstance(v, ort.OrtValue) for v in caches):  # a cache from elsewhere (zeros at the start)
            caches = [v if isinstance(v, ort.OrtValue) else
                      ort.OrtValue.ortvalue_from_numpy(np.array(v, dtype=np.float32, copy=True)) for v in caches]
        # One binding per conversation: the caches (ours, from the last step) stay bound as past and present at
        # once (written in place); only the step's own inputs change. Rebinding every tensor every token costs as
        # much as the graph itself at batch 1.
        with self._lock:
            bound = self._bound
            if bound is None or bound.batch != batch or any(a is not b for a, b in zip(bound.caches, caches)):
                bound = self._bound = _Bound(self.session, batch, self.pairs, caches)
            bound.lengths[:] = start + tokens - 1
            bound.total[...] = start + tokens
            bound.binding.bind_cpu_input("embeds", embeds)
            self.session.run_with_iobinding(bound.binding)
            logits = bound.logits.copy()  # the caller keeps it; the buffer is the next step's
        out = {plain.present: value for (plain, _), value in zip(self.pairs, caches)}
        out[LOGITS] = logits
        return out

    def close(self) -> None:
        self.session = self._bound = None


class _Bound:
    """The binding of one conversation's caches: past and present the same buffer, logits into a fixed array."""

    def __init__(self, session, batch: int, pairs: list, caches: list):
        self.batch, self.caches = batch, caches
        self.binding = session.io_binding()
        self.lengths, self.total = np.zeros((batch,), np.int32), np.zeros((), np.int32)
        vocab = next(o for o in session.get_outputs() if o.name == LOGITS).shape[-1]
        self.logits = np.empty((batch, vocab), np.float32)
        self.binding.bind_cpu_input("seqlens_k", self.lengths)  # bound by address: updated in place each step
        self.binding.bind_cpu_input("total_sequence_length", self.total)
        self.binding.bind_output(LOGITS, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        for (_, (past, present)), value in zip(pairs, caches):
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)


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
