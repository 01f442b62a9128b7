"""What each TensorRT generation accepts: its ONNX parser's operators and opsets, and its builder enums.

The one place these facts live. Sources (read, not guessed):
- operators: the onnx-tensorrt operator tables (``docs/operators.md``). 10.3: the 10.1-GA table ("opset 9
  to opset 20") plus the 10.2/10.3 changelog entries (tensor ``axes`` for Slice; no new operators).
  10.15: the 10.15 table ("opset 9 to opset 24"), which adds Attention, RMSNormalization, RotaryEmbedding,
  TensorScatter, STFT and the three window functions.
- builder enums: ``include/NvInfer.h`` / ``NvInferRuntime.h`` of NVIDIA/TensorRT release/10.3,
  release/10.15 and release/11.0. TensorRT 11 removed the precision flags, calibration and the
  cuBLAS/cuDNN tactic sources, and renumbered what remains, so pixdeploy names enum members, never values.

Module level is plain data (no onnx, no tensorrt): `build-engine` on a Jetson reads the enum sets.
"""

from __future__ import annotations

from dataclasses import dataclass

_OPS_10_3 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN
LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

_REDUCE = frozenset(op for op in _OPS_10_3 if op.startswith("Reduce"))


@dataclass(frozen=True)
class ParserTable:
    """One TensorRT ONNX parser: opsets it reads, operators it imports, and the restrictions that bite us."""

    version: str
    opset_min: int
    opset_max: int
    ops: frozenset
    # Inputs that must be an initializer or Constant ("`axes` must be an initializer"): op -> input index.
    constant_inputs: dict
    # Attention: Q, K, V and attn_mask 4-D; no past_key/past_value/nonpad_kv_seqlen, one output, no softcap.
    attention_4d: bool = False


_AXES = dict.fromkeys(_REDUCE | {"Squeeze", "Unsqueeze", "CumSum"}, 1)  # CumSum: its `axis`
PARSERS = {
    # Slice takes tensor axes since 10.3 (changelog); Pad's tensor axes came in 10.4.
    "10.3": ParserTable("10.3", 9, 20, _OPS_10_3, constant_inputs=_AXES | {"Pad": 3}),
    "10.15": ParserTable("10.15", 9, 24, _OPS_10_3 | {"Attention", "BlackmanWindow", "HammingWindow", "HannWindow",
                                                      "RMSNormalization", "RotaryEmbedding", "STFT", "TensorScatter"},
                         constant_inputs=_AXES, attention_4d=True),
}

# ---- builder API per generation (enum member names without the C++ 'k') ----

BUILDER_FLAGS = {
    10: frozenset("""FP16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE
        OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS DIRECT_IO REJECT_EMPTY_ALGORITHMS VERSION_COMPATIBLE
        EXCLUDE_LEAN_RUNTIME FP8 ERROR_ON_TIMING_CACHE_MISS BF16 DISABLE_COMPILATION_CACHE STRIP_PLAN WEIGHTLESS
        REFIT_IDENTICAL WEIGHT_STREAMING INT4 REFIT_INDIVIDUAL""".split()),  # release/10.3
    11: frozenset("""DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE DIRECT_IO
        VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME ERROR_ON_TIMING_CACHE_MISS DISABLE_COMPILATION_CACHE STRIP_PLAN
        REFIT_IDENTICAL WEIGHT_STREAMING REFIT_INDIVIDUAL STRICT_NANS MONITOR_MEMORY EDITABLE_TIMING_CACHE
        DISTRIBUTIVE_INDEPENDENCE""".split()),  # release/11.0
}
TACTIC_SOURCES = {
    10: frozenset({"CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"}),
    11: frozenset({"EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"}),
}
NETWORK_FLAGS = {
    10: frozenset({"EXPLICIT_BATCH", "STRONGLY_TYPED"}),
    # 11: every network is strongly typed; the STRONGLY_TYPED flag is kept but ignored.
    11: frozenset({"STRONGLY_TYPED", "PREFER_JIT_PYTHON_PLUGINS", "PREFER_AOT_PYTHON_PLUGINS"}),
}
PARSER_FLAGS = {
    "10.3": frozenset({"NATIVE_INSTANCENORM"}),
    "10.15": frozenset({"NATIVE_INSTANCENORM", "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA", "REPORT_CAPABILITY_DLA",
                        "ENABLE_PLUGIN_OVERRIDE"}),
}
# How a plugin registered under the `pixdeploy` namespace can claim a custom node (onnx-tensorrt ModelImporter):
# <= 10.6 the local function always wins; 10.7+ a `plugin_namespace` node attribute routes it to the plugin;
# 10.15+ also the ENABLE_PLUGIN_OVERRIDE parser flag.
PLUGIN_NAMESPACE_FROM = (10, 7)
PLUGIN_OVERRIDE_FLAG_FROM = (10, 15)


def parser_table(trt_version: str) -> ParserTable:
    """The newest table not newer than ``trt_version`` (10.3 for 10.3..10.14, 10.15 for 10.15 and 11.x)."""
    from pixdeploy.runtime.engine_header import version_tuple

    v = version_tuple(trt_version)[:2]
    known = sorted((version_tuple(k), t) for k, t in PARSERS.items())
    fitting = [t for k, t in known if k <= v]
    if not fitting:
        from pixdeploy.errors import PixdeployError

        raise PixdeployError(f"TensorRT {trt_version} is older than any export target (10.3 is the oldest)")
    return fitting[-1]


def unsupported(proto, trt_version: str) -> list[str]:
    """Everything in an ONNX model that TensorRT ``trt_version``'s parser would not import, one line each
    (empty: the model fits the table). Custom nodes are checked through their function bodies, as the
    parser inlines them when no plugin claims them."""
    import onnx
    import onnx.inliner

    table = parser_table(trt_version)
    problems = []
    for domain, version in ((o.domain, o.version) for o in proto.opset_import):
        if domain in ("", "ai.onnx") and not table.opset_min <= version <= table.opset_max:
            problems.append(f"opset {version} outside TensorRT {trt_version}'s {table.opset_min}..{table.opset_max}")
    for fn in proto.functions:
        for o in fn.opset_import:
            if o.domain in ("", "ai.onnx") and o.version > table.opset_max:
                problems.append(f"function {fn.domain}::{fn.name} imports opset {o.version} > {table.opset_max}")
    inlined = onnx.inliner.inline_local_functions(proto)
    inferred = onnx.shape_inference.infer_shapes(inlined, strict_mode=False)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) if v.type.tensor_type.HasField("shape") else None
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    constants = {i.name for i in inferred.graph.initializer}
    constants |= {o for n in inferred.graph.node if n.op_type == "Constant" for o in n.output}
    seen = set()
    for node in inferred.graph.node:
        where = f"{node.op_type} ({node.name or node.output[0]})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom op {node.domain}::{node.op_type} without a function body")
        elif node.op_type not in table.ops and node.op_type not in seen:
            seen.add(node.op_type)
            problems.append(f"{node.op_type}: no importer in TensorRT {trt_version}'s ONNX parser")
        index = table.constant_inputs.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] \
                and node.input[index] not in constants:
            problems.append(f"{where}: input {index} (axes) must be an initializer or Constant")
        if node.op_type == "Attention" and table.attention_4d:
            problems += [f"{where}: {p}" for p in _attention_problems(node, ranks)]
    return problems


def _attention_problems(node, ranks: dict) -> list[str]:
    out = []
    if len([i for i in node.input[4:] if i]) or len(node.input) > 4:
        out.append("past_key/past_value/nonpad_kv_seqlen inputs are not supported")
    if len([o for o in node.output[1:] if o]):
        out.append("only the first output is supported")
    if any(a.name in ("softcap", "qk_matmul_output_mode") and (a.f or a.i) for a in node.attribute):
        out.append("softcap and qk_matmul_output_mode are not supported")
    for name in (i for i in node.input[:4] if i):
        if ranks.get(name) != 4:
            out.append(f"input {name} must be 4-D (rank {ranks.get(name, 'unknown')})")
    return out
