"""Check an ONNX graph against what TensorRT's ONNX parser supports, without a GPU.

The table below transcribes the support matrix of the ONNX-TensorRT parser,
``onnx/onnx-tensorrt: docs/operators.md`` ("Supported ONNX Operators", TensorRT 10.15, opsets 9 to
24), for the operators our models use or could plausibly pick up from a PyTorch export, plus the
documented restrictions ("Restrictions" column) as attribute checks. Two restrictions come from the
TensorRT layer documentation rather than the table: ``IGridSampleLayer`` takes rank-4 tensors only
(NCHW; no volumetric 5D GridSample) and supports sample modes FILL/CLAMP/REFLECT (ONNX ``zeros``,
``border``, ``reflection``) with NEAREST/LINEAR/CUBIC interpolation.

Everything here is static: a clean report means the parser should accept the graph, not that an
engine will build (that needs the GPU); unknown operators are reported, never assumed supported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engines.errors import ModelFileError

log = logging.getLogger(__name__)

SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15 support matrix)"
MIN_OPSET = 9
MAX_OPSET = 24

Severity = Literal["error", "warning"]

# Operators the parser supports. Restrictions that can be checked statically are in _check_node.
SUPPORTED: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal
    Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow
    HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    TensorScatter Unsqueeze Upsample Where Xor
    """.split()  # noqa: SIM905 (the table reads like the source matrix)
)

# Operators the matrix lists as not supported ("N").
UNSUPPORTED: frozenset[str] = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad
    Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder
    MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
    OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
    SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer
    Unique
    """.split()  # noqa: SIM905 (the table reads like the source matrix)
)

RESIZE_COORD_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
GRIDSAMPLE_MODES = frozenset({"bilinear", "linear", "nearest", "bicubic", "cubic"})
GRIDSAMPLE_PADDING = frozenset({"zeros", "border", "reflection"})
REDUCE_OPS = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
    }
)
POOL_OPS = frozenset({"AveragePool", "MaxPool", "LpPool"})

_TENSOR_DOUBLE = 11
_TENSOR_STRING = 8


@dataclass(frozen=True)
class OpIssue:
    """One problem: the node (or ``<graph>``), its operator, what is wrong, how bad."""

    node: str
    op_type: str
    problem: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.op_type} node {self.node!r}: {self.problem}"


@dataclass(frozen=True)
class OpCheckReport:
    """Result of :func:`check_model`; ``ok`` means no errors (warnings allowed)."""

    model: str
    opset: int
    op_counts: tuple[tuple[str, int], ...]
    issues: tuple[OpIssue, ...]
    source: str = SOURCE

    @property
    def errors(self) -> tuple[OpIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[OpIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = (
            f"{self.model}: opset {self.opset}, {sum(c for _, c in self.op_counts)} nodes, "
            f"{len(self.errors)} unsupported, {len(self.warnings)} warnings (checked against {self.source})"
        )
        return "\n".join([head, *(f"  {i}" for i in self.issues)])

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "opset": self.opset,
            "ok": self.ok,
            "op_counts": dict(self.op_counts),
            "issues": [
                {"node": i.node, "op_type": i.op_type, "problem": i.problem, "severity": i.severity}
                for i in self.issues
            ],
            "source": self.source,
        }


def check_onnx_file(path: Path) -> OpCheckReport:
    """Load ``path`` (without external weights) and check it; needs the ``onnx`` package."""
    import onnx

    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file", reason="file_not_found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFileError(f"{path}: not an ONNX model: {exc}", reason="bad_onnx") from exc
    return check_model(model, name=path.name)


def check_model(model: Any, name: str = "model") -> OpCheckReport:
    """Check an ``onnx.ModelProto``: opset range, every operator, and the documented restrictions."""
    import onnx

    issues: list[OpIssue] = []
    opset = 0
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        issues.append(
            OpIssue(
                "<graph>",
                "opset",
                f"default-domain opset {opset} outside TensorRT's {MIN_OPSET}..{MAX_OPSET}",
            )
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # shape inference is best effort here
        log.debug("shape inference failed for %s: %s", name, exc)
        inferred = model
    ranks = _ranks(inferred.graph)
    elem_types = _elem_types(inferred.graph)
    constants = _constant_names(model.graph)
    counts: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        issues.extend(_check_node(node, opset, ranks, constants))
        for out in node.output:
            if elem_types.get(out) == _TENSOR_STRING:
                issues.append(
                    OpIssue(node.name or out, node.op_type, f"string tensor {out!r} is not supported")
                )
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.type.tensor_type.elem_type == _TENSOR_DOUBLE:
            issues.append(
                OpIssue(
                    "<graph>", "io", f"{vi.name!r} is DOUBLE; TensorRT casts it to FLOAT", severity="warning"
                )
            )
    return OpCheckReport(
        model=name, opset=opset, op_counts=tuple(sorted(counts.items())), issues=tuple(issues)
    )


def _all_nodes(graph: Any) -> Iterable[Any]:
    """Every node, including those in If/Loop/Scan subgraphs."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _ranks(graph: Any) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
    for init in graph.initializer:
        ranks[init.name] = len(init.dims)
    return ranks


def _elem_types(graph: Any) -> dict[str, int]:
    return {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.output, *graph.value_info]}


def _constant_names(graph: Any) -> frozenset[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return frozenset(names)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _check_node(node: Any, opset: int, ranks: dict[str, int], constants: frozenset[str]) -> list[OpIssue]:
    op = node.op_type
    label = node.name or (node.output[0] if node.output else op)
    if node.domain not in ("", "ai.onnx"):
        return [OpIssue(label, op, f"custom domain {node.domain!r} needs a TensorRT plugin")]
    if op in UNSUPPORTED:
        return [OpIssue(label, op, "not supported by TensorRT's ONNX parser")]
    if op not in SUPPORTED:
        return [OpIssue(label, op, "not in TensorRT's ONNX operator support table")]
    attrs = _attrs(node)
    issues: list[OpIssue] = []

    def bad(problem: str, severity: Severity = "error") -> None:
        issues.append(OpIssue(label, op, problem, severity))

    if op == "GridSample":
        rank = ranks.get(node.input[0])
        if rank is not None and rank != 4:
            bad(f"input rank {rank}: TensorRT GridSample is 4D (NCHW) only; no volumetric 5D sampling")
        elif rank is None:
            bad("input rank unknown; TensorRT GridSample needs a 4D input", "warning")
        mode = attrs.get("mode", "bilinear" if opset < 20 else "linear")
        if mode not in GRIDSAMPLE_MODES:
            bad(f"mode {mode!r} not supported")
        padding = attrs.get("padding_mode", "zeros")
        if padding not in GRIDSAMPLE_PADDING:
            bad(f"padding_mode {padding!r} not supported (zeros/border/reflection)")
    elif op in ("Conv", "ConvTranspose"):
        rank = ranks.get(node.input[1]) if len(node.input) > 1 else None
        kernel = attrs.get("kernel_shape")
        spatial = len(kernel) if kernel else (rank - 2 if rank else None)
        if spatial is not None and spatial not in (1, 2, 3):
            bad(f"{spatial}D {op}: TensorRT convolutions are 1D, 2D or 3D")
        if len(node.input) > 1 and node.input[1] not in constants:
            bad(
                "weights W are not an initializer; dynamic weights are slower and fail on older TensorRT",
                "warning",
            )
    elif op in POOL_OPS:
        kernel = attrs.get("kernel_shape", [])
        if len(kernel) not in (2, 3):
            bad(f"{len(kernel)}D pooling: TensorRT pooling is 2D or 3D only")
        dil = attrs.get("dilations")
        if dil and any(d != 1 for d in dil):
            bad(f"dilations {list(dil)}: must be empty or all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            bad("the Indices output is not supported")
    elif op == "Resize":
        mode = attrs.get("mode", "nearest")
        if mode not in RESIZE_MODES:
            bad(f"mode {mode!r} not supported (nearest, linear)")
        ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
        if ctm not in RESIZE_COORD_MODES:
            allowed = ", ".join(sorted(RESIZE_COORD_MODES))
            bad(f"coordinate_transformation_mode {ctm!r} not supported ({allowed})")
        if mode == "nearest":
            nm = attrs.get("nearest_mode", "round_prefer_floor")
            if nm not in RESIZE_NEAREST_MODES:
                bad(f"nearest_mode {nm!r} not supported")
        if attrs.get("antialias", 0):
            bad("antialias is not supported")
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            bad(f"keep_aspect_ratio_policy {policy!r} not supported (stretch only)")
    elif op in REDUCE_OPS:
        if len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
            bad("`axes` must be an initializer")
    elif op == "TopK":
        if attrs.get("sorted", 1) != 1:
            bad("`sorted` must be 1")
    elif op == "CumSum":
        if len(node.input) > 1 and node.input[1] not in constants:
            bad("`axis` must be a build-time constant")
    elif op == "ScatterND":
        if attrs.get("reduction", "none") != "none":
            bad(f"reduction {attrs['reduction']!r} not supported")
    elif op == "LayerNormalization":
        if sum(1 for o in node.output if o) > 1:
            bad("only the first output Y is supported")
    elif op == "Dropout":
        if len(node.input) > 2 and node.input[2] and node.input[2] not in constants:
            bad("`is_training` must be an initializer evaluating to False")
    elif op == "LSTM":
        if attrs.get("input_forget", 0) or attrs.get("layout", 0):
            bad("`input_forget` and `layout` must be 0")
    elif op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
        bad("sparse/string constants are not supported")
    return issues
