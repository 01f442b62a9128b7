"""Inference backends behind one contract, `Runner`: ``infer(feed)`` checks the feed once against the
graph's declared inputs (names, dtype, rank, fixed dims), then runs (`infer_impl`); ``close()`` frees what
the runner holds, and a runner is a context manager.

`onnxruntime` runs the ONNX graphs (CPU, or CUDA when onnxruntime-gpu is installed). `tensorrt` runs
engines built from the same graphs (`pixdeploy build-engine`). `openvino` runs the graphs, inlined, on
OpenVINO's CPU plugin at fp32 or bf16 (`pixdeploy.runtime.openvino_backend`). `open_runners` builds both runners of a
bundle variant for a backend; `Pipeline` takes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pixdeploy.errors import PixdeployError

ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(uint8)": np.uint8, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}
NP_TYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
            "uint8": np.uint8, "bool": np.bool_}


def value_spec(value) -> tuple[np.dtype, tuple]:
    """(dtype, shape) of a host array, or of a value already on a device (TensorRT `DeviceTensor`,
    onnxruntime `OrtValue`), without copying it."""
    if isinstance(value, np.ndarray):
        return value.dtype, value.shape
    if callable(getattr(value, "data_type", None)):  # onnxruntime OrtValue: methods, and type strings
        return np.dtype(ORT_TYPES.get(value.data_type(), np.void)), tuple(value.shape())
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return np.dtype(value.dtype), tuple(value.shape)
    arr = np.asarray(value)
    return arr.dtype, arr.shape


class Runner(ABC):
    """What every backend is: declared inputs, one feed check, ``infer_impl``, ``close``.

    ``inputs``: name -> (numpy dtype, shape), where a dim that is not a non-negative int is free.
    ``output_names``: in the graph's order. ``keep``: outputs left on the device between calls (the
    decoder's KV cache), as the bundle records them."""

    inputs: dict
    output_names: list
    keep: frozenset = frozenset()

    def infer(self, feed: dict) -> dict:
        self.check_feed(feed)
        return self.infer_impl(feed)

    @abstractmethod
    def infer_impl(self, feed: dict) -> dict:
        """Run a feed already checked; {output name: array or device value}."""

    def check_feed(self, feed: dict) -> None:
        missing = set(self.inputs) - set(feed)
        extra = set(feed) - set(self.inputs)
        if missing or extra:
            raise PixdeployError(
                f"feed does not match the graph: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, (dtype, shape) in self.inputs.items():
            got_dtype, got_shape = value_spec(feed[name])
            if got_dtype != np.dtype(dtype) or len(got_shape) != len(shape):
                raise PixdeployError(f"input {name}: expected {np.dtype(dtype).name} of rank {len(shape)}, "
                                     f"got {got_dtype} of shape {tuple(got_shape)}")
            for got, want in zip(got_shape, shape):
                if isinstance(want, int) and want >= 0 and got != want:
                    raise PixdeployError(f"input {name}: expected shape {tuple(shape)}, got {tuple(got_shape)}")

    def close(self) -> None:  # noqa: B027 -- a runner that holds nothing has nothing to free
        """Free what the runner holds (device memory, sessions); a closed runner is not used again."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def declared_inputs(signature: dict) -> dict:
    """A manifest signature's inputs as `Runner.inputs` (symbolic dims stay strings: free)."""
    return {name: (NP_TYPES[t["dtype"]], tuple(t["shape"])) for name, t in signature["inputs"].items()}


def execution_providers(device: str, available: list[str]) -> list[str]:
    """CUDA (then CPU for what CUDA lacks) where asked for and present, else the CPU alone. Never onnxruntime's
    TensorRT execution provider: onnxruntime-gpu lists it even where TensorRT is not installed (every session
    would print "EP Error ... Falling back"), and where it is, it builds a new engine for every input shape on
    first use. TensorRT runs through `--backend tensorrt`, from engines built once."""
    if device == "cpu" or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


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
        """The runner for a graph file: on a GPU provider with I/O binding (`pixdeploy.runtime.ort_gpu`),
        so the ``keep`` outputs (the KV cache) stay on the device between steps."""
        session = open_session(path, device)
        if session.get_providers()[0] == "CPUExecutionProvider":
            return cls(session, keep)
        from pixdeploy.runtime.ort_gpu import OnnxRuntimeBoundRunner

        return OnnxRuntimeBoundRunner(session, keep)

    def infer_impl(self, feed: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(None, feed)))

    def close(self) -> None:
        self.session = None


class FusedDecoderRunner(Runner):
    """A fused decoder graph (`pixdeploy.runtime.fused_decoder`: onnxruntime's CPU contrib operators, one KV buffer
    per cache tensor written in place) with the plain decoder's inputs and outputs."""

    def __init__(self, session, plain_signature: dict, cache_pairs: list, cfg):
        from pixdeploy.runtime.fused_decoder import fused_cache_names

        self.session = session
        self.inputs = declared_inputs(plain_signature)
        self.output_names = list(plain_signature["outputs"])
        self.pairs = list(zip(cache_pairs, fused_cache_names(cfg.n_layers)))  # (plain pair, (past, present))
        self.keep = frozenset(p.present for p in cache_pairs)

    @classmethod
    def open(cls, path, plain_signature: dict, cache_pairs: list, cfg) -> FusedDecoderRunner:
        from pixdeploy.runtime.fused_decoder import check_fused

        session = open_session(path, "cpu")
        check_fused({i.name: (ORT_TYPES.get(i.type), list(i.shape)) for i in session.get_inputs()},
                    {o.name: (ORT_TYPES.get(o.type), list(o.shape)) for o in session.get_outputs()}, cfg, path)
        if len(cache_pairs) != 2 * cfg.n_layers:
            raise PixdeployError(f"{path}: the bundle records {len(cache_pairs)} cache pairs, the fused decoder has "
                                 f"{2 * cfg.n_layers}")
        return cls(session, plain_signature, cache_pairs, cfg)

    def infer_impl(self, feed: dict) -> dict:
        import onnxruntime as ort

        pos = np.asarray(feed["input_pos"])
        start, tokens = int(pos[0]), len(pos)
        if not np.array_equal(pos, np.arange(start, start + tokens)):
            raise PixdeployError("the fused decoder takes consecutive positions from its cache's length on")
        embeds = np.ascontiguousarray(feed["embeds"], dtype=np.float32)
        batch = embeds.shape[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input("embeds", embeds)
        lengths = np.full((batch,), start + tokens - 1, np.int32)  # held until the run: the binding reads it
        total = np.array(start + tokens, np.int32)
        binding.bind_cpu_input("seqlens_k", lengths)
        binding.bind_cpu_input("total_sequence_length", total)
        binding.bind_output("logits")
        out = {}
        for plain, (past, present) in self.pairs:
            value = feed[plain.past]
            if not isinstance(value, ort.OrtValue):  # a cache from elsewhere (zeros at the start): ours from now
                value = ort.OrtValue.ortvalue_from_numpy(np.array(value, dtype=np.float32, copy=True))
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: written in place
            out[plain.present] = value
        self.session.run_with_iobinding(binding)
        out["logits"] = binding.get_outputs()[0].numpy()
        return out

    def close(self) -> None:
        self.session = None



def check_signature(runner: Runner, signature: dict, where: str) -> None:
    """A graph (or engine) must have the inputs and outputs its manifest entry records (names, dtypes, ranks,
    fixed dims): graphs swapped between entries, or a config edited away from them, are refused when loaded."""
    want_in = declared_inputs(signature)
    want_out = {n: (NP_TYPES[t["dtype"]], tuple(t["shape"])) for n, t in signature["outputs"].items()}
    problems = []
    if set(runner.inputs) != set(want_in) or set(runner.output_names) != set(want_out):
        problems.append(f"has inputs {sorted(runner.inputs)} and outputs {sorted(runner.output_names)}")
    else:
        for name, (dtype, shape) in want_in.items():
            got_dtype, got_shape = runner.inputs[name]
            fixed = [(a, b) for a, b in zip(got_shape, shape) if isinstance(a, int) and a >= 0 and isinstance(b, int)]
            if np.dtype(got_dtype) != np.dtype(dtype) or len(got_shape) != len(shape) or any(a != b for a, b in fixed):
                problems.append(f"input {name} is {np.dtype(got_dtype).name}{list(got_shape)}")
    if problems:
        raise PixdeployError(f"{where} does not match its manifest entry: it {'; '.join(problems)}")


def check_graphs_load(bundle, variant: str) -> bool:
    """Both graphs of ``variant`` load on onnxruntime (CPU) with the signatures the manifest records, as
    `Pipeline.load` loads them: a graph damaged with recomputed checksums, or swapped, is refused in one line
    before a command builds on it. False where onnxruntime is not installed (a TensorRT-only Jetson), which
    then checks nothing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    for runner in _onnxruntime_runners(bundle, variant, "cpu", frozenset()):
        runner.close()
    return True


def _onnxruntime_runners(bundle, variant: str, device: str, keep: frozenset) -> tuple[Runner, Runner]:
    runners = []
    for graph in ("image_encoder", "decoder"):
        path = bundle.graph_path(graph, variant)
        if graph == "decoder" and bundle.decoder_form(variant) is not None:
            if device == "cuda":
                raise PixdeployError(f"variant {variant} of {bundle.path} has a decoder made for onnxruntime on a "
                                     "CPU; use --device cpu, or another variant on the GPU")
            runners.append(FusedDecoderRunner.open(path, bundle.graphs[graph], bundle.cache_pairs(), bundle.config))
            continue
        runner = OnnxRuntimeRunner.open(path, device, keep if graph == "decoder" else frozenset())
        check_signature(runner, bundle.graphs[graph], f"{path} ({graph} of variant {variant})")
        runners.append(runner)
    return runners[0], runners[1]


def _tensorrt_runners(bundle, variant: str, device: str, keep: frozenset, allow_host_code: bool = False,
                      plugins: tuple = ()) -> tuple[Runner, Runner]:
    from pixdeploy.runtime.tensorrt_backend import open_engines  # TensorRT and Polygraphy are optional

    return open_engines(bundle, variant, device, keep, allow_host_code=allow_host_code, plugins=tuple(plugins))


def _openvino_runners(bundle, variant: str, device: str, keep: frozenset, precision: str = "fp32",
                      gate_images=None) -> tuple[Runner, Runner]:
    from pixdeploy.runtime.openvino_backend import openvino_runners  # OpenVINO and onnx are optional

    return openvino_runners(bundle, variant, device, keep, precision=precision, gate_images=gate_images)


BACKENDS = {"onnxruntime": _onnxruntime_runners, "tensorrt": _tensorrt_runners, "openvino": _openvino_runners}


def open_runners(bundle, backend: str, variant: str, device: str, **options) -> tuple[Runner, Runner]:
    """(image encoder, decoder) runners of ``variant`` on ``backend``; the decoder keeps the bundle's recorded
    cache outputs on the device."""
    if backend not in BACKENDS:
        raise PixdeployError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    import inspect

    factory = BACKENDS[backend]
    unknown = set(options) - set(inspect.signature(factory).parameters)
    if unknown:
        raise PixdeployError(f"backend {backend} takes no option {', '.join(sorted(unknown))}")
    if backend != "onnxruntime" and bundle.decoder_form(variant) is not None:
        raise PixdeployError(f"variant {variant} of {bundle.path} has a decoder written with onnxruntime's fused CPU "
                             f"operators; run it with --backend onnxruntime (or run another variant on {backend})")
    keep = frozenset(p.present for p in bundle.cache_pairs())
    return factory(bundle, variant, device, keep, **options)
