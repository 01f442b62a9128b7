"""PyTorch -> ONNX for the two graphs of a bundle.

- ``image_encoder``: uint8 letterboxed images + sizes -> window embeddings. Carries the custom nodes
  ``pixdeploy::ColorFold`` and ``pixdeploy::WindowAttention`` with their ONNX function bodies.
- ``decoder``: one graph for prefill (T > 1) and decode (T = 1): input embeddings, their positions and a
  fixed-size KV cache (shapes never change: friendly to TensorRT profiles and CUDA graphs) -> logits of
  the last position only, and the updated cache. Word embeddings stay outside the graph: the runtime
  looks them up in a numpy table, so a decode step feeds one row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from pixdeploy.export.ops import DOMAIN, VERSION
from pixdeploy.export.ops.color_fold import ColorFold, color_fold_export
from pixdeploy.export.ops.window_attention import WindowAttention, window_attention_export
from pixdeploy.export.ops.window_summary_attention import WindowSummaryAttention, window_summary_attention_export
from pixdeploy.export.profiles import PROFILES, ExportProfile
from pixdeploy.export.quiet import quiet_exporter
from pixdeploy.runtime.bundle.records import CachePair, GraphSignature, TensorSpec
from torch import nn

import pixdeploy.model as model_module
from pixdeploy.errors import PixdeployError
from pixdeploy.model import PixTokenLM

OPSET = 23  # the fused Attention operator, used by WindowAttention's body
IR_VERSION = 11  # what opset 23 needs; onnx 1.23 writes 14 by default, which onnxruntime 1.31 cannot read
CUSTOM_FUNCTIONS = (ColorFold, WindowAttention, WindowSummaryAttention)


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph, described declaratively (names, symbolic dims, why)."""

    name: str
    inputs: dict[str, tuple]  # name -> (dtype, dims); a str dim is symbolic
    outputs: dict[str, tuple]
    purpose: str
    cache: tuple = ()  # (input, output) pairs a caller feeds back: the decoder's KV cache

    def signature(self) -> GraphSignature:
        """The bundle's record of this graph; the cache pairs are recorded once here, so no runtime re-derives
        the names or the dtype."""
        return GraphSignature({k: TensorSpec(d, tuple(s)) for k, (d, s) in self.inputs.items()},
                              {k: TensorSpec(d, tuple(s)) for k, (d, s) in self.outputs.items()},
                              tuple(CachePair(p, q, self.inputs[p][0], tuple(self.inputs[p][1]))
                                    for p, q in self.cache),
                              self.purpose)

    def to_dict(self) -> dict:
        return {"file": f"{self.name}.onnx", **self.signature().to_dict()}


def graph_specs(cfg) -> list[GraphSpec]:
    S, W, C = cfg.image_size, cfg.n_windows, cfg.dim
    cache = ("float32", ["batch", cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim])
    pairs = tuple((f"past_{kv}_{i}", f"present_{kv}_{i}") for i in range(cfg.n_layers) for kv in "kv")
    kv_in = {p: cache for p, _ in pairs}
    kv_out = {q: cache for _, q in pairs}
    return [
        GraphSpec("image_encoder",
                  {"images": ("uint8", ["images", S, S, 3]), "sizes": ("int64", ["images", 2])},
                  {"window_embeddings": ("float32", ["images", W, C])},
                  "letterboxed RGB + (h, w) of the image part -> one embedding per pixel window"),
        GraphSpec("decoder",
                  {"embeds": ("float32", ["batch", "tokens", C]), "input_pos": ("int64", ["tokens"]), **kv_in},
                  {"logits": ("float32", ["batch", cfg.vocab_out]), **kv_out},
                  "prefill (tokens > 1) or one decode step (tokens = 1) over a fixed-size KV cache", cache=pairs),
    ]


class ImageEncoder(nn.Module):
    def __init__(self, model: PixTokenLM):
        super().__init__()
        self.model = model

    def forward(self, images, sizes):
        return self.model.encode_images(images, sizes)


class DecoderStep(nn.Module):
    def __init__(self, model: PixTokenLM):
        super().__init__()
        self.model = model

    def forward(self, embeds, input_pos, *past):
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        h, cache = self.model.decode(embeds, cache, input_pos)
        return (self.model.logits(h[:, -1]), *[t for kv in cache for t in kv])


# Export-time patches, one table: the model function each custom op replaces while exporting, so the graph
# carries a pixdeploy:: node where the model computes the op in PyTorch. Each target is checked before any is
# patched: a renamed function in pixdeploy/model.py makes export refuse in one line instead of silently
# exporting the plain PyTorch ops.
PATCHES = (
    (model_module, "fold_torch", color_fold_export),
    (model_module, "window_attention", window_attention_export),
    # The pruned last image layer's one-query-per-window attention (see PixTokenLM.encode_images).
    (model_module, "window_summary_attention", window_summary_attention_export),
)


@contextlib.contextmanager
def custom_ops(patches=PATCHES):
    """Export-time patch: the model's fold and window attention emit pixdeploy:: nodes."""
    missing = [f"{module.__name__}.{name}" for module, name, _ in patches if not callable(getattr(module, name, None))]
    if missing:
        raise PixdeployError(f"export cannot substitute the custom ops: {', '.join(missing)} no longer exists "
                             "(update PATCHES in pixdeploy/export/onnx_export.py)")
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, replacement in patches:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def example_inputs(spec: GraphSpec, cfg) -> tuple:
    """Small valid inputs; every symbolic dim is marked dynamic, so their values do not matter."""
    if spec.name == "image_encoder":
        S = cfg.image_size
        return (torch.randint(0, 256, (2, S, S, 3), dtype=torch.uint8), torch.tensor([[S, S], [S, S // 2]]))
    # Distinct tensors: one object passed twice would be traced as one aliased input.
    caches = [torch.randn(2, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim) for _ in range(2 * cfg.n_layers)]
    return (torch.randn(2, 3, cfg.dim), torch.arange(3, 6), *caches)


def name_dims(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give the exporter's symbolic dims (s34, s56, ...) the spec's names, so every tool shows the same."""
    for values, declared in ((proto.graph.input, spec.inputs), (proto.graph.output, spec.outputs)):
        for value in values:
            dims = declared[value.name][1]
            for dim, want in zip(value.type.tensor_type.shape.dim, dims):
                if isinstance(want, str):
                    dim.dim_param = want


def name_body_nodes(fp: onnx.FunctionProto) -> None:
    """Prefix a function body's node names with the function's name. onnxscript names every body's nodes n0, n1,
    ...; TensorRT's parser inlines bodies under those names, so two custom ops' bodies collided ("A node named n2
    already exists ...") and their tensors could not be inspected. (Two calls of one function still share names:
    the parser gives an inlined body no per-call scope.)"""
    for i, node in enumerate(fp.node):
        node.name = f"{fp.name}/{node.name or i}"


def finalize(proto: onnx.ModelProto, spec: GraphSpec,
             profile: ExportProfile = PROFILES["onnxruntime"]) -> onnx.ModelProto:
    """Name dims, attach custom-op bodies, pin opset and IR version, name the producer, then rewrite the
    operators for the export profile (`pixdeploy.export.profile_lowering`)."""
    name_dims(proto, spec)
    used = {(n.domain, n.op_type) for n in proto.graph.node}
    for fn in CUSTOM_FUNCTIONS:
        fp = fn.to_function_proto()
        if (fp.domain, fp.name) in used and all(f.name != fp.name for f in proto.functions):
            name_body_nodes(fp)
            proto.functions.append(fp)
    if not any(o.domain == DOMAIN for o in proto.opset_import) and any(d == DOMAIN for d, _ in used):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, VERSION))
    proto.ir_version = IR_VERSION
    proto.producer_name = "pixdeploy"
    from pixdeploy import __version__

    proto.producer_version = __version__
    from pixdeploy.export.profile_lowering import apply_profile

    apply_profile(proto, profile)  # sets the profile's opset and IR version
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_graph(model: PixTokenLM, spec: GraphSpec, path: Path,
                 profile: ExportProfile = PROFILES["onnxruntime"], wrapper: nn.Module | None = None) -> onnx.ModelProto:
    # ``wrapper``: another module with the spec's signature (the fp16 variant casts at its edges).
    wrapper = wrapper or (ImageEncoder if spec.name == "image_encoder" else DecoderStep)(model).eval()
    args = example_inputs(spec, model.cfg)
    dynamic = []
    for dtype_dims in spec.inputs.values():
        dims = {i: torch.export.Dim.DYNAMIC for i, d in enumerate(dtype_dims[1]) if isinstance(d, str)}
        dynamic.append(dims or None)
    if spec.name == "decoder":  # forward(embeds, input_pos, *past): varargs are one nested entry
        dynamic = [dynamic[0], dynamic[1], tuple(dynamic[2:])]
    with custom_ops(), torch.no_grad(), quiet_exporter():  # third-party noise is not the user's concern
        program = torch.onnx.export(
            wrapper, args, dynamo=True, opset_version=OPSET, input_names=list(spec.inputs),
            output_names=list(spec.outputs), dynamic_shapes=tuple(dynamic), verbose=False, optimize=True,
        )
    proto = finalize(program.model_proto, spec, profile)
    onnx.save(proto, str(path))
    return proto
