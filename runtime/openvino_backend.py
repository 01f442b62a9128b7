"""OpenVINO on the CPU: the bundle's ONNX graphs, inlined in memory, compiled at fp32 or bf16.

    Pipeline.load("bundle/", backend="openvino")                          # fp32 (never OpenVINO's own default)
    Pipeline.load("bundle/", backend="openvino", precision="bf16")        # bf16, gated at load

OpenVINO 2026.4 does not expand ONNX local functions ("No conversion rule found for operations:
pixdeploy.ColorFold, ..."), so each graph is inlined first (`onnx.inliner.inline_local_functions`: the
custom nodes become their function bodies, which is exactly what they compute) and handed to OpenVINO as
bytes; nothing is written to the bundle or beside it. ``onnx`` is therefore part of the ``openvino`` extra
(``pip install "pixdeploy[openvino]"``); neither needs torch.

Precision is always set explicitly (``INFERENCE_PRECISION_HINT``): OpenVINO itself picks bf16 on a CPU
that has it, and a backend that silently drops to ~3 significant digits is not what ``fp32`` means.
``bf16`` is refused in one line on a CPU without native bf16 (OpenVINO would emulate it, slower than fp32)
and is gated when it loads: the bf16 pipeline and onnxruntime on the same graphs (fp32 compute; for the
fp32 variant, onnxruntime fp32) answer the gate's images (default: the real photos and handwriting
scikit-learn ships) and must agree within the fp16 limits of the parity table (`pixdeploy.parity_limits`:
embedding and prefill-logit cosine >= 0.999, the same greedy answers over 8 tokens); a pipeline that fails
is refused with the figures, never run.
"""

from __future__ import annotations

import numpy as np
from pixdeploy.runtime.runner import Runner, check_signature

from pixdeploy.errors import PixdeployError

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # our name -> OpenVINO's inference precision
GATE_STEPS = 8  # greedy tokens compared per gate image (an answer's length, as in `quantize`'s gate)


def _openvino():
    from pixdeploy.telemetry import import_openvino

    try:
        return import_openvino()  # with OpenVINO's telemetry declined: nothing written under ~/intel
    except ImportError:
        raise PixdeployError('OpenVINO is not installed: pip install "pixdeploy[openvino]"') from None


def inlined_onnx(path) -> bytes:
    """The graph at ``path`` with every ONNX local function (the pixdeploy custom nodes) inlined, serialized."""
    return _inlined(path)[0]


def _inlined(path) -> tuple[bytes, frozenset, frozenset]:
    """(`inlined_onnx` of ``path``, the names of its graph inputs, the names of its graph outputs)."""
    try:
        import onnx
        import onnx.inliner
    except ImportError:
        raise PixdeployError("the openvino backend needs onnx to inline the graphs: "
                             'pip install "pixdeploy[openvino]"') from None
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # a damaged graph (its checksum was recomputed) is the user's, not a bug
        raise PixdeployError(f"cannot load {path}: {str(e).splitlines()[0][:300]}") from None
    initializers = {t.name for t in proto.graph.initializer}
    inputs = frozenset(i.name for i in proto.graph.input if i.name not in initializers)
    outputs = frozenset(o.name for o in proto.graph.output)
    return onnx.inliner.inline_local_functions(proto).SerializeToString(), inputs, outputs


def port_name(port, declared: frozenset) -> str:
    """The name of a compiled model's input or output as the ONNX graph declares it. After compiling, a port
    may carry several tensor names (a graph ending in a Cast gives its output the Cast's input name too, e.g.
    ``view_9`` and ``window_embeddings``), and ``get_any_name`` may return either: the declared one is taken
    when exactly one of them is declared (otherwise any, which the signature check then reports)."""
    names = set(port.get_names()) & declared
    return names.pop() if len(names) == 1 else port.get_any_name()


def compile_graph(path, precision: str, core, prepare=None) -> tuple:
    """(the graph at ``path`` inlined and compiled for the CPU at ``precision``, the (input, output) names it
    declares). ``prepare(model, declared)`` may change the read model first. Errors are one line naming ``path``."""
    try:
        graph, *declared = _inlined(path)
        model = core.read_model(graph)
        if prepare is not None:
            prepare(model, declared)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                                                     "PERFORMANCE_HINT": "LATENCY"})
    except PixdeployError:
        raise
    except Exception as e:  # OpenVINO raises RuntimeError for graphs it cannot convert
        raise PixdeployError(f"OpenVINO cannot load {path}: {str(e).strip().splitlines()[0][:300]}") from None
    return compiled, tuple(declared)


def cpu_has_bf16(core) -> bool:
    """OpenVINO's own view: the CPU plugin lists BF16 among its capabilities only where it is native."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRunner(Runner):
    """One compiled OpenVINO model and its infer request; outputs come back as numpy arrays (copies: the request
    reuses its buffers)."""

    def __init__(self, compiled, keep=frozenset(), precision: str = "fp32", declared=(frozenset(), frozenset())):
        """``declared``: the (input, output) names the ONNX graph declares, which name the ports."""
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._ports = {port_name(p, declared[0]): p for p in compiled.inputs}  # fed by port, not by a name
        self.inputs = {name: (p.get_element_type().to_dtype().type,
                              tuple(d.get_length() if d.is_static else "?" for d in p.get_partial_shape()))
                       for name, p in self._ports.items()}
        self.output_names = [port_name(o, declared[1]) for o in compiled.outputs]
        self.keep = frozenset(keep)
        self.precision = precision
        self.providers = [f"OpenVINO CPU {precision}"]  # what `bench` reports as what ran

    @classmethod
    def open(cls, path, precision: str = "fp32", keep=frozenset(), core=None) -> OpenVinoRunner:
        compiled, declared = compile_graph(path, precision, core or _openvino().Core())
        return cls(compiled, keep, precision, declared)

    def infer_impl(self, feed: dict) -> dict:
        # Inputs are read in place (the call is synchronous and never writes them); outputs are copied out of the
        # request's buffers, which the next call overwrites, so each result stays the caller's.
        result = self.request.infer({self._ports.get(k, k): np.ascontiguousarray(v) for k, v in feed.items()},
                                    share_inputs=True, share_outputs=False)
        return dict(zip(self.output_names, result.to_tuple()))

    def close(self) -> None:
        self.request = None
        self.compiled = None


class KvState:
    """What a `StatefulDecoder` hands back for each cache output: a token for the cache it holds inside the
    compiled model (no tensor leaves it). Valid while its decoder has not been reset since."""

    dtype = np.float32

    def __init__(self, decoder, epoch: int, shape: tuple):
        self.decoder, self.epoch, self.shape = decoder, epoch, shape


class StatefulDecoder(Runner):
    """The decoder compiled with its KV cache held inside the model (OpenVINO states: each past/present pair the
    bundle records becomes a ReadValue/Assign variable, as optimum-intel does for LLMs), behind the plain
    decoder's contract: a call at position 0 starts a new cache; a later call takes the `KvState` tokens its
    previous call returned. No cache crosses the API, so none is copied in or out per step."""

    def __init__(self, compiled, signature, pairs: list, precision: str):
        from pixdeploy.runtime.runner import declared_inputs

        self.compiled, self.request = compiled, compiled.create_infer_request()
        self.inputs = declared_inputs(signature)
        self.output_names = list(signature.outputs)
        self.pairs = list(pairs)
        self.keep = frozenset(p.present for p in self.pairs)
        self.epoch, self.length = 0, 0
        self.providers = [f"OpenVINO CPU {precision}, KV cache held in the model"]

    @classmethod
    def open(cls, path, signature, pairs: list, precision: str, core) -> StatefulDecoder:
        def stateful(model, declared):
            from openvino import opset13 as ops
            from openvino._offline_transformations import apply_make_stateful_transformation

            check_signature(_Ports(model, declared), signature, f"{path} (decoder)")
            apply_make_stateful_transformation(model, {p.past: p.present for p in pairs})
            # Each variable starts as zeros of the cache's shape, its batch that of this call's embeds.
            batch = ops.gather(ops.shape_of(model.input("embeds"), output_type="i64"),
                               ops.constant(np.array([0], np.int64)), ops.constant(np.array(0, np.int64)))
            for op in model.get_ops():
                if op.get_type_name() == "ReadValue":
                    dims = [ops.constant(np.array([d.get_length()], np.int64))
                            for d in list(op.get_output_partial_shape(0))[1:]]
                    zero = ops.constant(np.array(0, op.get_output_element_type(0).to_dtype()))
                    op.set_arguments([ops.broadcast(zero, ops.concat([batch, *dims], 0))])
            model.validate_nodes_and_infer_types()

        compiled, _ = compile_graph(path, precision, core, prepare=stateful)
        return cls(compiled, signature, pairs, precision)

    def infer_impl(self, feed: dict) -> dict:
        pos = np.asarray(feed["input_pos"])
        start, tokens = int(pos[0]), len(pos)
        if start == 0:
            self.request.reset_state()
            self.epoch, self.length = self.epoch + 1, 0
        else:
            for p in self.pairs:
                held = feed[p.past]
                if not (isinstance(held, KvState) and held.decoder is self and held.epoch == self.epoch) \
                        or start > self.length:
                    raise PixdeployError("this OpenVINO decoder holds its KV cache inside the model: continue from "
                                         "the cache its last call returned, or start again at position 0")
        embeds = np.ascontiguousarray(feed["embeds"])
        result = self.request.infer({"embeds": embeds, "input_pos": np.ascontiguousarray(pos)},
                                    share_inputs=True, share_outputs=False)
        self.length = max(self.length, start + tokens)
        out = {"logits": result[self.compiled.output(0)]}
        for p in self.pairs:
            shape = tuple(embeds.shape[0] if isinstance(d, str) else d for d in p.shape)
            out[p.present] = KvState(self, self.epoch, shape)
        return out

    def close(self) -> None:
        self.request = None
        self.compiled = None


class _Ports:
    """A read (not compiled) OpenVINO model's inputs and outputs, as `check_signature` reads a runner's."""

    def __init__(self, model, declared):
        ports = {port_name(p, declared[0]): p for p in model.inputs}
        self.inputs = {n: (p.get_element_type().to_dtype().type,
                           tuple(d.get_length() if d.is_static else "?" for d in p.get_partial_shape()))
                       for n, p in ports.items()}
        self.output_names = [port_name(o, declared[1]) for o in model.outputs]


def openvino_runners(bundle, variant: str, device: str, keep: frozenset, precision: str = "fp32"
                     ) -> tuple[Runner, Runner]:
    """(image encoder, decoder) on OpenVINO's CPU plugin at ``precision`` (fp32 or bf16). Opens only: the bf16
    gate (`check_bf16`) is run by `Pipeline.open` on what this returns."""
    if precision not in PRECISIONS:
        raise PixdeployError(f"unknown OpenVINO precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if device == "cuda":
        raise PixdeployError("the openvino backend runs on the CPU; use --device cpu or auto")
    ov = _openvino()
    core = ov.Core()
    if precision == "bf16" and not cpu_has_bf16(core):
        raise PixdeployError("bf16 asked for, but this CPU has no native bf16 (AVX512_BF16 or AMX); use fp32")
    encoder = OpenVinoRunner.open(bundle.graph_path("image_encoder", variant), precision, core=core)
    try:
        check_signature(encoder, bundle.signatures["image_encoder"], f"{bundle.graph_path('image_encoder', variant)} "
                        f"(image_encoder of variant {variant})")
        decoder = StatefulDecoder.open(bundle.graph_path("decoder", variant), bundle.signatures["decoder"],
                                       bundle.cache_pairs(), precision, core)
    except BaseException:
        encoder.close()
        raise
    return encoder, decoder


class Bf16GateError(PixdeployError):
    """OpenVINO bf16 answered differently from onnxruntime fp32 beyond the fp16 limits."""


def gate_checks(got, ref, got_tokens, ref_tokens) -> dict:
    """The fp16 row of the parity table applied to (embeddings, logits) pairs and greedy tokens:
    name -> (value, limit, passed)."""
    from pixdeploy.parity_limits import THRESHOLDS, answer_match, compare

    limits = THRESHOLDS["fp16"]
    values = {"embed_cosine_min": (compare(got[0], ref[0])["cosine_min"], limits["embed_cosine_min"]),
              "logits_cosine_min": (compare(got[1], ref[1])["cosine_min"], limits["logits_cosine_min"]),
              "greedy_match": (answer_match(got_tokens, ref_tokens), limits["greedy_match_min"])}
    return {k: (v, lim, bool(np.isfinite(v) and v >= lim)) for k, (v, lim) in values.items()}


def check_bf16(candidate, reference, gate_images=None) -> dict:
    """The bf16 gate: ``candidate`` (a `Pipeline` on OpenVINO bf16) against ``reference`` (one on onnxruntime, fp32
    compute, the same variant's graphs); raises `Bf16GateError` naming every failing figure, returns the checks
    otherwise."""
    from pixdeploy.runtime.sampling import Sampling

    from pixdeploy.sample_images import sample_images

    try:
        images = list(gate_images) if gate_images is not None else sample_images()
    except PixdeployError:
        raise PixdeployError("the bf16 gate needs images: install scikit-learn (its sample photos) or pass "
                             "gate_images") from None
    rgb, sizes = reference.preprocess(images)
    ids = reference.prompt_ids()
    steps = max(1, min(GATE_STEPS, reference.cfg.max_seq_len - len(ids)))
    outs = {}
    for name, pipe in (("ref", reference), ("got", candidate)):
        emb = pipe.embed_letterboxed(rgb, sizes)
        logits, _ = pipe.prefill(emb, ids)
        tokens = np.stack(list(pipe.decode_steps(emb, ids, Sampling(max_new_tokens=steps, stop=None))), 1)
        outs[name] = (emb, logits, tokens)
    checks = gate_checks(outs["got"][:2], outs["ref"][:2], outs["got"][2], outs["ref"][2])
    failed = [f"{k}={v:.6f} (limit {lim:g})" for k, (v, lim, ok) in checks.items() if not ok]
    if failed:
        raise Bf16GateError(f"OpenVINO bf16 of variant {candidate.variant} of {candidate.bundle.path} failed its "
                            f"gate against onnxruntime on the same graphs: {', '.join(failed)}; use precision fp32")
    return checks
