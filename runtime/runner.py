"""The runner contract every backend meets, `Runner`: ``infer(feed)`` checks the feed once against the graph's
declared inputs (names, dtype, rank, fixed dims), then runs (`infer_impl`); ``close()`` frees what the runner
holds, and a runner is a context manager. Also the one check of a runner against its manifest entry
(`check_signature`). No backend is imported here: each backend module builds on this one.
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


def declared_inputs(signature) -> dict:
    """A bundle's graph signature (`GraphSignature`) as `Runner.inputs` (symbolic dims stay strings: free)."""
    return {name: (NP_TYPES[t.dtype], tuple(t.shape)) for name, t in signature.inputs.items()}


def check_signature(runner: Runner, signature, where: str) -> None:
    """A graph (or engine) must have the inputs and outputs its manifest entry records (names, dtypes, ranks,
    fixed dims): graphs swapped between entries, or a config edited away from them, are refused when loaded."""
    want_in = declared_inputs(signature)
    want_out = {n: (NP_TYPES[t.dtype], tuple(t.shape)) for n, t in signature.outputs.items()}
    problems = []
    if set(runner.inputs) != set(want_in) or set(runner.output_names) != set(want_out):
        problems.append(f"has inputs {sorted(runner.inputs)} and outputs {sorted(runner.output_names)}")
    else:
        for name, (dtype, shape) in want_in.items():
            got_dtype, got_shape = runner.inputs[name]
            fixed = [(a, b) for a, b in zip(got_shape, shape) if isinstance(a, int) and a >= 0 and isinstance(b, int)]
            if np.dtype(got_dtype) != np.dtype(dtype) or len(got_shape) != len(shape) or any(a != b for a, b in fixed):
                problems.append(f"input {name} is {np.dtype(got_dtype).name}{list(got_shape)}")
    pairs = [(c.past, c.present) for c in signature.cache]
    pasts, presents = [p for p, _ in pairs], [q for _, q in pairs]
    in_graph = list(zip([n for n in runner.inputs if n in pasts], [n for n in runner.output_names if n in presents]))
    if not problems and pairs and sorted(map(str, in_graph)) != sorted(map(str, pairs)):
        # The pairs feed each present output back as a past input. The graph pairs its i-th cache input with its
        # i-th cache output; any other pairing would feed one layer's cache to another (other answers from the
        # same graphs), whatever order the manifest lists them in.
        problems.append("pairs its KV-cache inputs and outputs otherwise than the manifest's cache pairs")
    if problems:
        raise PixdeployError(f"{where} does not match its manifest entry: it {'; '.join(problems)}")
