"""Compute of an exported graph, counted from the ONNX file itself: multiply-accumulates at a given frame size.

    count_macs("models/tiny/encoder.onnx", 256, 256, downsample=8)  ->  GraphMacs(macs=..., by_op={...}, ...)

The graph's input gets concrete sizes (batch 1; H x W for an image input, H/ds x W/ds for an ids input), ONNX shape
inference (with data propagation, so Shape -> Reshape chains resolve) gives every tensor's shape, and the sum runs
over the operators that do the multiplications:

    Conv / ConvTranspose  kh * kw * Cin / groups * Cout * (output positions; input positions for ConvTranspose)
    MatMul                (elements of the output) * K, K the shared axis (the nearest-code distance z @ E^T counts)
    Gemm                  M * K * N

Element-wise work (activations, additions, the argmin, resizes and layout changes) is not counted. Padding
positions count like the others, so the figure per pixel is the same at every size that is a multiple of ds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import shape_inference

from provq.train.errors import ProvqError

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class GraphMacs:
    """Multiply-accumulates of one graph for one frame of ``height`` x ``width`` pixels (batch 1)."""

    macs: int
    by_op: dict[str, int]  # operator type -> MACs
    height: int
    width: int

    @property
    def gmac_per_megapixel(self) -> float:
        """GMAC per million frame pixels (10^9 MACs per 10^6 pixels)."""
        return self.macs / (self.height * self.width) / 1e3


def _concrete_input(model: onnx.ModelProto, height: int, width: int, downsample: int) -> None:
    """Fix the single graph input's shape in place: N x 3 x H x W images or N x H/ds x W/ds ids, N = 1."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ProvqError(f"expected a graph with one input, found {len(inputs)}: pass a provq encoder or decoder")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        values = [1, dims[1].dim_value or 3, height, width]
    elif len(dims) == 3:
        if height % downsample or width % downsample:
            raise ProvqError(f"{height} x {width} is not a multiple of the downsample factor {downsample}")
        values = [1, height // downsample, width // downsample]
    else:
        raise ProvqError(f"graph input {inputs[0].name} has rank {len(dims)}: expected images (4) or ids (3)")
    for dim, value in zip(dims, values, strict=True):
        dim.Clear()
        dim.dim_value = value


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    graph = inferred.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = [d.dim_value for d in tensor.shape.dim]
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _node_macs(node: onnx.NodeProto, shape) -> int:
    if node.op_type == "Conv":
        weight, out = shape(node.input[1]), shape(node.output[0])  # Cout x Cin/g x kh x kw, N x Cout x Ho x Wo
        return math.prod(weight) * out[0] * math.prod(out[2:])
    if node.op_type == "ConvTranspose":
        weight, inp = shape(node.input[1]), shape(node.input[0])  # Cin x Cout/g x kh x kw, N x Cin x H x W
        return math.prod(weight) * inp[0] * math.prod(inp[2:])
    if node.op_type == "MatMul":
        a = shape(node.input[0])
        return math.prod(shape(node.output[0])) * a[-1]
    a, b = shape(node.input[0]), shape(node.input[1])  # Gemm
    m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attr(node, "transB", 0) else b[1]
    return m * k * n


def count_macs(onnx_path: str | Path, height: int, width: int, *, downsample: int) -> GraphMacs:
    """MACs of an encoder (images input) or decoder (ids input) graph for one ``height`` x ``width`` frame."""
    model = onnx.load(str(onnx_path))
    _concrete_input(model, height, width, downsample)
    try:
        shapes = _shapes(model)
    except onnx.shape_inference.InferenceError as err:
        raise ProvqError(f"ONNX shape inference failed on {Path(onnx_path).name}: {str(err).splitlines()[0]}") from None

    def shape(name: str) -> list[int]:
        if name not in shapes:
            raise ProvqError(f"{Path(onnx_path).name}: no static shape inferred for tensor {name!r}")
        return shapes[name]

    by_op: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in COUNTED_OPS:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + _node_macs(node, shape)
    return GraphMacs(macs=sum(by_op.values()), by_op=by_op, height=height, width=width)
