"""The TensorRT backend: a bundle's engines behind the same ``infer(feed) -> {name: array}`` interface as
onnxruntime. No torch: TensorRT's Python bindings, and Polygraphy's ctypes CUDA runtime wrapper for memory,
streams and CUDA graphs.

- The engine set is the one `pixdeploy.runtime.bundle.select_engine_set` picks for the variant, this GPU
  and this TensorRT; each file is checksummed and its header checked (GPU, TensorRT version, length,
  checksum) before TensorRT deserializes anything. Version-compatible engines embed host code: they load
  only with ``allow_host_code=True`` (the user's opt-in), never by default. Plugin libraries are loaded
  only from paths the user passes (``plugins=``), never from the bundle.
- Device buffers are allocated once, at each tensor's largest shape over the engine's profiles.
- The KV-cache outputs the bundle records (``keep``) stay on the GPU as `DeviceTensor`s; fed back as the cache inputs
  they are bound by address, with no host round trip. Two buffer sets alternate, since TensorRT does not
  let a step read and write one buffer.
- The single-token decode profile (static shapes) is captured as a CUDA graph per (batch, buffer set)
  after one warm-up run, as trtexec does, and replayed; capture failure falls back to plain enqueue.

Not yet executed on TensorRT: no machine this project runs on has TensorRT and a GPU (see README).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from pixdeploy.runtime.bundle import select_engine_set
from pixdeploy.runtime.engine_header import EngineError, check_runs_here, read_engine
from pixdeploy.runtime.runner import Runner, check_signature

from pixdeploy.errors import PixdeployError
from pixdeploy.text import printable

_CAPTURE_MODE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise PixdeployError("TensorRT is not installed: on x86, pip install tensorrt (NVIDIA's index); on JetPack, "
                             "sudo apt install python3-libnvinfer (venv with --system-site-packages)") from None
    try:
        from polygraphy import cuda
    except ImportError:
        raise PixdeployError('Polygraphy is not installed: pip install "pixdeploy[tensorrt]"') from None
    return tensorrt, cuda


def open_engines(bundle, variant: str, device: str, keep: frozenset, *, allow_host_code: bool = False,
                 plugins: tuple = ()) -> tuple[TensorRTRunner, TensorRTRunner]:
    """(image encoder, decoder) runners of the engine set `select_engine_set` picks for this GPU and TensorRT.

    ``plugins``: plugin libraries the user names (never ones a bundle names: loading a library runs its
    code). An engine set built with plugins is refused without them, before TensorRT reads a plan."""
    if device == "cpu":
        raise PixdeployError("the tensorrt backend runs on a GPU; use backend='onnxruntime' for device='cpu'")
    trt, _ = _trt()
    from pixdeploy.runtime.cuda_device import current_gpu

    _, cc = current_gpu()
    chosen = select_engine_set(bundle, variant, tensorrt=trt.__version__, compute_capability=cc,
                               allow_version_compatible=allow_host_code)
    bundle.engine_headers(chosen)  # every engine checked against the bundle and its set before a plan is read
    if chosen.plugins and not plugins:
        raise EngineError(f"engine set {chosen.name} of {bundle.path} was built with plugin libraries "
                          f"({printable(', '.join(chosen.plugins))}); pass them: Pipeline.load(..., "
                          "plugins=['/path/libplugin.so']) or --plugins")
    load_plugins(plugins, trt)
    files = bundle.engine_files(chosen)
    runners = (TensorRTRunner(files["image_encoder"], allow_host_code=allow_host_code),
               TensorRTRunner(files["decoder"], allow_host_code=allow_host_code, keep=keep))
    for graph, runner in zip(("image_encoder", "decoder"), runners):
        check_signature(runner, bundle.signatures[graph], f"{files[graph]} ({graph} of engine set {chosen.name})")
    return runners


def load_plugins(libraries, trt) -> None:
    """Register the plugin libraries the user named before a plan is deserialized or a graph parsed, through
    TensorRT's own registry (``IPluginRegistry.load_library``): it takes both kinds of plugin library, those that
    register themselves when loaded and those that only export ``getCreators`` (a plain ``ctypes.CDLL`` load
    registers the first kind only)."""
    registry = trt.get_plugin_registry()
    for lib in libraries:
        path = Path(lib)
        if not path.is_file():
            raise PixdeployError(f"plugin library {lib} does not exist")
        try:
            handle = registry.load_library(str(path.resolve()))
        except Exception as e:  # TensorRT raises its own error types
            raise PixdeployError(f"cannot load plugin library {lib}: {str(e).splitlines()[0][:300]}") from None
        if handle is None:
            raise PixdeployError(f"cannot load plugin library {lib}: TensorRT's plugin registry refused it")


class DeviceTensor:
    """A tensor left on the GPU (a region of one of the runner's `DeviceArray`s). Valid until the runner that
    made it has run twice more."""

    def __init__(self, ptr: int, shape: tuple, dtype, cuda, stream):
        self.ptr, self.shape, self.dtype = ptr, tuple(shape), np.dtype(dtype)
        self._cuda, self._stream = cuda, stream

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self._cuda.DeviceView(self.ptr, self.shape, self.dtype).copy_to(out, self._stream)
        self._stream.synchronize()
        return out

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)


class TensorRTRunner(Runner):
    def __init__(self, engine_path, allow_host_code: bool = False, keep=frozenset()):
        trt, cuda = _trt()
        from pixdeploy.runtime.cuda_device import current_gpu

        _, cc = current_gpu()
        self.path = Path(engine_path)
        header, plan = read_engine(self.path)
        check_runs_here(header, self.path, trt.__version__, cc)
        self.header, self.trt, self.cuda = header, trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        if header.get("version_compatible"):
            if not allow_host_code:
                raise EngineError(f"{self.path} is version-compatible and embeds host code; load it only if you "
                                  "trust its source: Pipeline.load(..., backend='tensorrt', allow_host_code=True)")
            runtime.engine_host_code_allowed = True
        self.runtime = runtime  # the engine must not outlive its runtime
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineError(f"TensorRT {trt.__version__} could not load {self.path} (see its log above)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self.input_names = [n for n in names if is_input(n)]
        self.output_names = [n for n in names if not is_input(n)]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.profiles = [p["name"] for p in header["profiles"]]
        self.inputs = {n: (self.dtypes[n].type, tuple(self.engine.get_tensor_shape(n))) for n in self.input_names}
        self.keep = frozenset(n for n in self.output_names if n in keep)
        self._allocate()
        self._profile = None
        self._flip = 0
        self._graphs: dict = {}

    # ---- buffers, once ----

    def _allocate(self) -> None:
        """One Polygraphy `DeviceArray` per input and output at its largest shape over all profiles (two for kept
        outputs), allocated once."""
        largest: dict[str, int] = {}  # elements
        for index in range(self.engine.num_optimization_profiles):
            self._use_profile(index)
            for name in self.input_names:
                hi = tuple(self.engine.get_tensor_profile_shape(name, index)[2])
                self.context.set_input_shape(name, hi)
                largest[name] = max(largest.get(name, 0), int(np.prod(hi)))
            for name in self.output_names:
                largest[name] = max(largest.get(name, 0), int(np.prod(tuple(self.context.get_tensor_shape(name)))))
        array = lambda n: self.cuda.DeviceArray(shape=(max(largest[n], 1),), dtype=self.dtypes[n])  # noqa: E731
        self.buffers = {n: array(n) for n in largest}
        self.spare = {n: array(n) for n in self.keep}  # the alternate KV-cache set

    def _use_profile(self, index: int) -> None:
        if not self.context.set_optimization_profile_async(index, self.stream.ptr):
            raise PixdeployError(f"{self.path}: cannot select optimization profile {index}")
        self._profile = index

    def close(self) -> None:
        """Free the device buffers and CUDA graphs; the context and engine go before the runtime."""
        for array in [*self.buffers.values(), *self.spare.values()]:
            array.free()
        self.buffers, self.spare = {}, {}
        for exe in filter(None, self._graphs.values()):
            self.cuda.wrapper().handle.cudaGraphExecDestroy(exe)
        self._graphs = {}
        self.context = self.engine = None

    # ---- one call ----

    def _pick_profile(self, feed: dict) -> int:
        """Decode (all inputs within profile 1's static shapes) or the first profile that fits."""
        for index in reversed(range(self.engine.num_optimization_profiles)):
            if all(self._fits(name, np.shape(feed[name]) if not isinstance(feed[name], DeviceTensor)
                              else feed[name].shape, index) for name in self.input_names):
                return index
        shapes = {n: tuple(np.shape(v)) if not isinstance(v, DeviceTensor) else v.shape for n, v in feed.items()}
        raise PixdeployError(f"{self.path}: input shapes {shapes} fit none of its profiles; rebuild with a larger "
                             "--max-batch")

    def _fits(self, name: str, shape: tuple, index: int) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, index)
        return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def infer_impl(self, feed: dict) -> dict:
        index = self._pick_profile(feed)
        if index != self._profile:
            self._use_profile(index)
        addresses = []
        for name in self.input_names:
            value = feed[name]
            if isinstance(value, DeviceTensor):  # the previous step's KV cache: bind it where it lies
                ptr, shape = value.ptr, value.shape
            else:
                arr = np.ascontiguousarray(value)
                ptr, shape = self.buffers[name].copy_from(arr, self.stream).ptr, arr.shape
            self.context.set_input_shape(name, shape)
            self.context.set_tensor_address(name, ptr)
            addresses.append(ptr)
        # Kept outputs alternate between two buffer sets, so this step never writes what it reads.
        self._flip ^= 1
        out = {n: (self.spare[n] if self._flip and n in self.keep else self.buffers[n]) for n in self.output_names}
        out_ptrs = {n: a.ptr for n, a in out.items()}
        for name, ptr in out_ptrs.items():
            self.context.set_tensor_address(name, ptr)
            addresses.append(ptr)
        self._enqueue(index, tuple(np.shape(feed[self.input_names[0]])
                                   if not isinstance(feed[self.input_names[0]], DeviceTensor)
                                   else feed[self.input_names[0]].shape), tuple(addresses))
        result = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if name in self.keep:
                result[name] = DeviceTensor(out_ptrs[name], shape, self.dtypes[name], self.cuda, self.stream)
            else:
                result[name] = out[name].view(shape).copy_to(np.empty(shape, self.dtypes[name]), self.stream)
        self.stream.synchronize()
        return result

    # ---- CUDA graphs for the static decode profile ----

    def _enqueue(self, index: int, lead_shape: tuple, addresses: tuple) -> None:
        static = self.profiles[index] == "decode"
        key = (index, lead_shape, addresses)
        if static and key in self._graphs and self._graphs[key] is not None:
            self._check(self.cuda.wrapper().handle.cudaGraphLaunch(self._graphs[key], self._void(self.stream.ptr)),
                        "cudaGraphLaunch")
            return
        if not self.context.execute_async_v3(self.stream.ptr):
            raise PixdeployError(f"TensorRT failed to run {self.path} (see its log above)")
        if static and key not in self._graphs:  # warm-up done just now: capture the next identical step
            self.stream.synchronize()
            self._graphs[key] = self._capture()

    def _capture(self):
        """Record one enqueue as a CUDA graph; None when the engine cannot be captured (then plain enqueue)."""
        cudart, stream = self.cuda.wrapper().handle, self._void(self.stream.ptr)
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        if cudart.cudaStreamBeginCapture(stream, ctypes.c_int(_CAPTURE_MODE_THREAD_LOCAL)) != 0:
            return None
        ok = self.context.execute_async_v3(self.stream.ptr)
        if cudart.cudaStreamEndCapture(stream, ctypes.byref(graph)) != 0 or not ok:
            return None
        if cudart.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)) != 0:
            return None
        cudart.cudaGraphDestroy(graph)  # the executable graph keeps what it needs
        return exe

    @staticmethod
    def _void(ptr: int):
        return ctypes.c_void_p(ptr)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise PixdeployError(f"CUDA error {status} in {what}")


