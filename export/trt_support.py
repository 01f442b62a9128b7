"""What each TensorRT generation accepts: its ONNX parser's operators and opsets, and its builder enums.

The one place these facts live. Sources (read, not guessed):
- operators and their element types: the onnx-tensorrt operator tables (``docs/operators.md``, the "Supported
  Types" column). 10.3: the 10.1-GA table ("opset 9 to opset 20") plus the 10.2/10.3 changelog entries (tensor
  ``axes`` for Slice; no new operators, no type changes). 10.15: the 10.15 table ("opset 9 to opset 24"), which
  adds Attention, RMSNormalization, RotaryEmbedding, TensorScatter, STFT and the three window functions.
- builder enums: ``include/NvInfer.h`` / ``NvInferRuntime.h`` of NVIDIA/TensorRT release/10.3,
  release/10.15 and release/11.0. TensorRT 11 removed the precision flags, calibration and the
  cuBLAS/cuDNN tactic sources, and renumbered what remains, so pixdeploy names enum members, never values.

Module level is plain data (no onnx, no tensorrt): `build-engine` on a Jetson reads the enum sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The "Supported Types" column of onnx-tensorrt docs/operators.md, every operator marked "Y", grouped by type set
# (type names as the table writes them). Source: onnx/onnx-tensorrt tag release/10.1-GA (commit 96e78110), the
# table TensorRT 10.1 shipped; its ConstantOfShape row reads "INF64", a typo for INT64. The onnx-tensorrt changelog
# entries for 10.2 and 10.3 add no operator and change no type ("tensor `axes` inputs for `Slice`", "updated
# ScatterElements plugin", GRU/Squeeze importer changes), so this is the 10.3 table too.
_TYPES_10_1 = """
FP32 FP16 BF16: Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose
    Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor GRU Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    GroupNormalization HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf LRN LSTM
    LayerNormalization LeakyRelu Log LogSoftmax LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization PRelu
    ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal
    Resize Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample
FP32 FP16 BF16 INT32 INT64: Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less
    LessOrEqual Max Min Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub
    Sum TopK
FP32 FP16 BF16 INT32 INT64 BOOL: Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND
    Identity If Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where
FP32 FP16: DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign
BOOL: And Not Or Xor
FP32 FP16 BF16 INT32 INT64 UINT8 BOOL: Cast CastLike
FP8 INT4 INT8: DequantizeLinear
FP32 FP16 BF16 INT8 INT32 INT64: Gelu
FP32 FP16 BF16 FP8 INT32 INT64: Mean
"""

# The 10.15 table (onnx-tensorrt docs/operators.md headed "TensorRT 10.15 supports operators in the inclusive range
# of opset 9 to opset 24"): the rows that differ from 10.1's, each in full. Every other "Y" row is the same.
_TYPES_10_15_CHANGED = """
FP32 FP16 BF16 INT8 FP8: Attention
FP32 FP16: BlackmanWindow HammingWindow HannWindow
FP32 FP16 BF16: RMSNormalization RotaryEmbedding
FP32: STFT
FP32 FP16 BF16 INT32: TensorScatter
FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL: Constant ConstantOfShape
INT8 FP8 FP4 INT4: DequantizeLinear
FP32 FP16 BF16 INT32 INT64: Pow
"""


def _type_table(text: str) -> dict:
    table = {}
    for group in text.replace("\n    ", " ").strip().splitlines():
        types, ops = group.split(":")
        table.update(dict.fromkeys(ops.split(), frozenset(types.split())))
    return table


TYPES_10_3 = _type_table(_TYPES_10_1)
TYPES_10_15 = TYPES_10_3 | _type_table(_TYPES_10_15_CHANGED)
_OPS_10_3 = frozenset(TYPES_10_3)

# The table's type names -> ONNX element type names (TensorRT's FP8 is E4M3, its FP4 E2M1).
ONNX_TYPES = {"FP32": "FLOAT", "FP16": "FLOAT16", "BF16": "BFLOAT16", "FP8": "FLOAT8E4M3FN", "FP4": "FLOAT4E2M1",
              "INT4": "INT4", "INT8": "INT8", "INT32": "INT32", "INT64": "INT64", "UINT8": "UINT8", "BOOL": "BOOL"}
# operators.md (10.1 and 10.15): "UINT8 is only supported as network input or output tensor types", and
# NvInferRuntimeBase.h (NVIDIA/TensorRT release/10.3, DataType::kUINT8): "kUINT8 conversions are only supported for
# {kFLOAT, kHALF}". So a UINT8 tensor must be a network input read only by Casts to FLOAT/FLOAT16, or a network
# output written by a Cast from them.
UINT8_CASTS = frozenset({"FLOAT", "FLOAT16"})
# Which of an operator's ONNX type parameters the "Supported Types" column speaks of: "T" where the schema has one
# (so indices, shapes, axes and conditions, which have their own parameters, are not held to it), else the first
# input's (Identity's "V"), and these where the column covers more than one.
TYPED_PARAMS = {"Cast": {"T1", "T2"}, "CastLike": {"T1", "T2"}, "Attention": {"T1", "T2"},
                "ConstantOfShape": {"T2"}, "RMSNormalization": {"T", "V"}}

_REDUCE = frozenset(op for op in _OPS_10_3 if op.startswith("Reduce"))


@dataclass(frozen=True)
class ParserTable:
    """One TensorRT ONNX parser: opsets it reads, operators it imports, and the restrictions that bite us."""

    version: str
    opset_min: int
    opset_max: int
    # Operator -> the element types its "Supported Types" column lists (the keys: every operator it imports).
    types: dict
    source: str  # where the operator rows come from
    # Inputs that must be an initializer or Constant ("`axes` must be an initializer"): op -> input index.
    constant_inputs: dict
    # Attention: Q, K, V and attn_mask 4-D; no past_key/past_value/nonpad_kv_seqlen, one output, no softcap.
    attention_4d: bool = False
    # Node attributes the parser's static checker refuses outright: op -> {attribute: the checker's words}.
    refused_attributes: dict = field(default_factory=dict)
    # (op, type) pairs outside the column that the importer itself is known to take: -> where that is shown.
    type_exceptions: dict = field(default_factory=dict)

    @property
    def ops(self) -> frozenset:
        return frozenset(self.types)


_AXES = dict.fromkeys(_REDUCE | {"Squeeze", "Unsqueeze", "CumSum"}, 1)  # CumSum: its `axis`
# Clip on INT32/INT64 takes the importer's elementwise max/min path (onnx/onnx-tensorrt release/10.1-GA
# onnxOpImporters.cpp lines 562-598, `elementwiseClipHelper<int64_t>`). Kept for graphs from elsewhere: pixdeploy's
# own graphs clip in FLOAT. Not carried to 10.15, whose importer source was not read.
_CLIP_INT = {("Clip", "INT32"): "onnx-tensorrt release/10.1-GA onnxOpImporters.cpp:562-598",
             ("Clip", "INT64"): "onnx-tensorrt release/10.1-GA onnxOpImporters.cpp:562-598"}
# onnx-tensorrt onnxOpCheckers.cpp, checkAttention (TensorRT 10.15 GA; the same check, same words, in TensorRT for
# RTX 1.7's parser): `!hasSoftmaxPrecision && "Setting softmax precision is not supported in TensorRT Attention."`.
# The fused kernels keep softmax statistics in fp32 whatever the input type, so an fp16 graph loses nothing by it.
_ATTENTION_REFUSED = {"Attention": {"softmax_precision": "Setting softmax precision is not supported in TensorRT "
                                                         "Attention."}}
PARSERS = {
    # Slice takes tensor axes since 10.3 (changelog); Pad's tensor axes came in 10.4.
    "10.3": ParserTable("10.3", 9, 20, TYPES_10_3, "onnx/onnx-tensorrt release/10.1-GA docs/operators.md + "
                        "Changelog 10.2, 10.3", constant_inputs=_AXES | {"Pad": 3}, type_exceptions=_CLIP_INT),
    "10.15": ParserTable("10.15", 9, 24, TYPES_10_15, "onnx/onnx-tensorrt docs/operators.md of TensorRT 10.15",
                         constant_inputs=_AXES, attention_4d=True, refused_attributes=_ATTENTION_REFUSED),
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
# <= 10.6 the local function always wins; 10.7+ a `plugin_namespace` node attribute routes it to the plugin.
# (10.15's ENABLE_PLUGIN_OVERRIDE flag is not used: it sends built-in ops to the plugin registry too.)
PLUGIN_NAMESPACE_FROM = (10, 7)


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
    (empty: the model fits the table): opsets, operators, the element types of every node's tensors against the
    "Supported Types" column, UINT8 anywhere but a network input or output, and the restrictions above. Custom
    nodes are checked through their function bodies, as the parser inlines them when no plugin claims them."""
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
    opset = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), table.opset_max)
    types = element_types(inferred)
    seen = set()
    for node in inferred.graph.node:
        where = f"{node.op_type} ({node.name or node.output[0]})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom op {node.domain}::{node.op_type} without a function body")
            continue
        if node.op_type not in table.ops:
            if node.op_type not in seen:
                seen.add(node.op_type)
                problems.append(f"{node.op_type}: no importer in TensorRT {trt_version}'s ONNX parser")
            continue
        problems += [f"{where}: {p}" for p in _type_problems(node, types, inferred.graph, table, opset, trt_version)]
        index = table.constant_inputs.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] \
                and node.input[index] not in constants:
            problems.append(f"{where}: input {index} (axes) must be an initializer or Constant")
        if node.op_type == "Attention" and table.attention_4d:
            problems += [f"{where}: {p}" for p in _attention_problems(node, ranks)]
        refused = table.refused_attributes.get(node.op_type, {})
        problems += [f"{where}: attribute {a.name}: {refused[a.name]}" for a in node.attribute if a.name in refused]
    return problems


def element_types(model) -> dict:
    """Tensor name -> ONNX element type name, for every tensor a (type-inferred) graph types."""
    from onnx import TensorProto

    name = TensorProto.DataType.Name
    graph = model.graph
    out = {v.name: name(v.type.tensor_type.elem_type) for v in [*graph.value_info, *graph.input, *graph.output]
           if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    out |= {i.name: name(i.data_type) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in out:
            for a in node.attribute:
                if a.name in ("value", "sparse_value"):
                    out[node.output[0]] = name(a.t.data_type if a.name == "value" else a.sparse_tensor.values.data_type)
                elif a.name in ("value_int", "value_ints"):
                    out[node.output[0]] = "INT64"
                elif a.name in ("value_float", "value_floats"):
                    out[node.output[0]] = "FLOAT"
    return out


def _typed_tensors(node, opset: int) -> list[tuple[str, str]] | None:
    """(role, tensor) for every input and output of ``node`` that the Supported Types column speaks of (None: the
    operator has no ONNX schema at ``opset``)."""
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    formals = [*schema.inputs, *schema.outputs]
    params = TYPED_PARAMS.get(node.op_type) or (
        {"T"} if any(f.type_str == "T" for f in formals) else {formals[0].type_str})
    out = []
    for role, tensors, declared in (("input", node.input, schema.inputs), ("output", node.output, schema.outputs)):
        for i, tensor in enumerate(tensors):
            formal = declared[min(i, len(declared) - 1)]  # a variadic parameter is the last one
            if tensor and formal.type_str in params:
                out.append((role, tensor))
    return out


def _type_problems(node, types: dict, graph, table: ParserTable, opset: int, trt_version: str) -> list[str]:
    from onnx import TensorProto

    network_inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    network_outputs = {o.name for o in graph.output}
    problems = []
    cast = node.op_type == "Cast"
    cast_to = next((TensorProto.DataType.Name(a.i) for a in node.attribute if a.name == "to"), None) if cast else None
    for tensor in [*node.input, *node.output]:
        if tensor and types.get(tensor) == "UINT8":
            if tensor in node.input:
                fine = cast and tensor in network_inputs and cast_to in UINT8_CASTS
            else:
                fine = cast and tensor in network_outputs and types.get(node.input[0]) in UINT8_CASTS
            if not fine:
                problems.append(f"{tensor} is UINT8, which TensorRT takes only as a network input read by a Cast to "
                                "FLOAT/FLOAT16 or a network output written by one")
    allowed = {ONNX_TYPES[t] for t in table.types[node.op_type]}
    wrong = {}  # element type -> tensors of it
    typed = _typed_tensors(node, opset)
    if typed is None:
        return [*problems, f"no ONNX schema at opset {opset}, so its element types cannot be checked"]
    for role, tensor in typed:
        dtype = types.get(tensor)
        if dtype is None:
            problems.append(f"{role} {tensor} has no inferred element type")
        elif dtype not in allowed and dtype != "UINT8" \
                and (node.op_type, _TABLE_NAMES.get(dtype)) not in table.type_exceptions:
            wrong.setdefault(dtype, []).append(tensor)
    for dtype, tensors in wrong.items():
        problems.append(f"{dtype} ({', '.join(tensors)}), but TensorRT {trt_version} imports {node.op_type} for "
                        f"{', '.join(sorted(table.types[node.op_type]))} only ({table.source})")
    return problems


_TABLE_NAMES = {v: k for k, v in ONNX_TYPES.items()}


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
