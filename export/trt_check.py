"""``provq-export check``: will TensorRT's ONNX parser take these files, and do the Q/DQ nodes follow its rules?

A static check that runs anywhere (no TensorRT, no GPU): every node is an operator the parser of the oldest TensorRT
we support (10.3, JetPack 6) imports, with the attributes it accepts; the opset is within 9-20; Q/DQ nodes follow
TensorRT's explicit-quantization rules (signed INT8, zero point 0, constant positive scales, per-tensor activations,
per-channel only on constant weights, every Q feeding a DQ); and the nearest-code search (distance MatMul, ArgMin,
codebook Gather: nodes named ``/quantizer/...``) carries no Q/DQ.

The operator list is the subset of onnx-tensorrt's ``docs/operators.md`` (TensorRT 10.x) that image models use;
an operator outside it is reported, not assumed to fail. Passing this check is necessary, not sufficient: only a
build on the device (``provq-export engine``) proves an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.formats.graph import QUANTIZER_SCOPE
from provq.edge_runtime.manifest import PARTS, load_manifest

OLDEST_TENSORRT = "10.3"
OPSETS = (9, 20)  # TensorRT 10.x parses opsets 9-20 (onnx-tensorrt docs/operators.md)

# fmt: off
SUPPORTED_OPS = frozenset(
    {
        "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat",
        "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "DequantizeLinear", "Div", "Dropout",
        "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm",
        "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity",
        "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max",
        "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "QuantizeLinear", "Range",
        "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape",
        "Resize", "Round", "Shape", "Sigmoid", "Sign", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt",
        "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
    }
)
# fmt: on
RESIZE_MODES = {"nearest", "linear", "cubic"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
CAST_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
              onnx.TensorProto.BOOL, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}  # fmt: skip
QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class Finding:
    """One problem: ``error`` (the parser or TensorRT's Q/DQ rules will refuse it) or ``warning``."""

    level: str
    file: str
    node: str
    message: str

    def __str__(self) -> str:
        where = f" node {self.node}:" if self.node else ":"
        return f"{self.level}: {self.file}{where} {self.message}"


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output, else None (a runtime tensor)."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_qdq(g: _Graph, node: onnx.NodeProto, opset: int, emit) -> None:
    scale = g.constant(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        emit("error", node, "scale must be a constant (TensorRT needs build-time scales)")
        return
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        emit("error", node, "scale must be finite and positive")
    if len(node.input) > 2 and node.input[2]:
        zero = g.constant(node.input[2])
        if zero is None or np.any(zero != 0):
            emit("error", node, "zero point must be 0 (TensorRT supports symmetric quantization only)")
        elif zero.dtype != np.int8:
            emit("error", node, f"quantized type is {zero.dtype}, TensorRT's GPU path needs int8")
    per_channel = scale.size > 1
    data_is_constant = g.constant(node.input[0]) is not None
    if node.op_type == "DequantizeLinear" and not data_is_constant:
        source = g.producer.get(node.input[0])
        data_is_constant = (
            source is not None and source.op_type == "QuantizeLinear" and g.constant(source.input[0]) is not None
        )
    if per_channel and opset < 13:
        emit("error", node, "per-channel scales need opset >= 13")
    if per_channel and not data_is_constant:
        emit("error", node, "per-channel scales on an activation: TensorRT quantizes activations per tensor")
    if node.op_type == "QuantizeLinear":
        readers = g.consumers.get(node.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" for r in readers):
            emit("error", node, "every QuantizeLinear must feed DequantizeLinear nodes only (explicit Q/DQ pairs)")


def check_model_file(path: Path, *, label: str | None = None) -> list[Finding]:
    """All findings for one ONNX file (empty: it passes)."""
    label = label or path.name
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises several unrelated types for unreadable files
        return [Finding("error", label, "", f"not a valid ONNX model ({type(err).__name__}): re-export it")]
    findings: list[Finding] = []

    def emit(level: str, node: onnx.NodeProto | None, message: str) -> None:
        findings.append(Finding(level, label, node.name or node.op_type if node is not None else "", message))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not OPSETS[0] <= opset <= OPSETS[1]:
        emit("error", None, f"opset {opset}: TensorRT {OLDEST_TENSORRT} parses opsets {OPSETS[0]}-{OPSETS[1]}")
    g = _Graph(model)
    for value in list(model.graph.input) + list(model.graph.output):
        elem = value.type.tensor_type.elem_type
        if elem == onnx.TensorProto.DOUBLE:
            emit("error", None, f"graph tensor {value.name} is float64: TensorRT has no double I/O")
        elif elem == onnx.TensorProto.INT64:
            emit("warning", None, f"graph tensor {value.name} is int64: TensorRT casts it to int32")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            emit("error", node, f"operator {node.domain}.{node.op_type} is not an ONNX standard operator")
            continue
        if node.op_type not in SUPPORTED_OPS:
            emit("error", node, f"operator {node.op_type} is not in TensorRT {OLDEST_TENSORRT}'s ONNX operator list")
            continue
        if node.op_type in QDQ:
            _check_qdq(g, node, opset, emit)
            if node.name.startswith(QUANTIZER_SCOPE) or any(
                n.name.startswith(QUANTIZER_SCOPE) for n in g.consumers.get(node.output[0], [])
            ):
                emit("error", node, "Q/DQ on the nearest-code search: the quantizer must stay FP32")
        elif node.op_type in ("Conv", "ConvTranspose"):
            weight = node.input[1]
            source = g.producer.get(weight)
            constant = g.constant(weight) is not None or (
                source is not None and source.op_type == "DequantizeLinear" and g.constant(source.input[0]) is not None
            )
            if not constant and not (source is not None and source.op_type == "DequantizeLinear"):
                emit("error", node, "weights must be an initializer (or a DequantizeLinear of one)")
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coordinates = _attr(node, "coordinate_transformation_mode", "half_pixel")
            nearest = _attr(node, "nearest_mode", "round_prefer_floor")
            if mode not in RESIZE_MODES or coordinates not in RESIZE_COORDINATES or nearest not in RESIZE_NEAREST:
                emit("error", node, f"Resize mode {mode}/{coordinates}/{nearest} is not one TensorRT implements")
        elif node.op_type in ("ArgMin", "ArgMax"):
            if _attr(node, "select_last_index", 0):
                emit("error", node, "select_last_index=1 is not supported by TensorRT")
        elif node.op_type == "Cast":
            if _attr(node, "to") not in CAST_TYPES:
                target = onnx.TensorProto.DataType.Name(_attr(node, "to"))
                emit("error", node, f"Cast to {target} is not a TensorRT type")
        elif node.op_type == "TopK" and g.constant(node.input[1]) is None:
            emit("error", node, "TopK's K must be a constant")
        if node.name.startswith(QUANTIZER_SCOPE):
            for name in node.input:
                source = g.producer.get(name)
                if source is not None and source.op_type in QDQ:
                    emit("error", node, "its input passes through Q/DQ: the nearest-code search must stay FP32")
    return findings


def check_model_dir(model_dir: str | Path) -> list[Finding]:
    """Findings for every ONNX file the manifest lists (FP32 and, once calibrated, INT8)."""
    manifest = load_manifest(model_dir)
    findings: list[Finding] = []
    for precision in manifest.precisions:
        for part in PARTS:
            path = manifest.path(precision, part)
            try:
                manifest.verify(path)
            except EdgeError as err:
                findings.append(Finding("error", path.name, "", str(err)))
                continue
            findings += check_model_file(path)
    return findings
