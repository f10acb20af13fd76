"""FP32 ONNX graph -> FP16 ONNX graph: what TensorRT needs for a strongly typed FP16 engine.

TensorRT 11 removed the FP16 builder flag: a strongly typed network takes every layer's precision from the types in
the ONNX graph, so an FP16 engine needs a graph whose convolutions and activations are FP16 tensors. This module
writes one from the FP32 export (``encoder.fp16.onnx``, ``decoder.fp16.onnx``):

- the body (Conv, Sigmoid, Mul, Add, ...) computes in FP16: its weights and constants are stored as FP16;
- nodes whose names start with a ``keep_fp32`` prefix stay FP32: the nearest-code search (``/quantizer/``) and the
  two 1x1 projections around it (``/quant_proj/``, ``/post_quant_proj/``), so the latents, distances, argmin and
  codebook vectors are computed exactly as in FP32;
- so does any operator outside ``FP16_OPS`` (it gets FP32 inputs), so an unexpected operator costs speed, never
  correctness;
- the graph inputs and outputs keep their types (images float32 N x 3 x H x W in [-1, 1], ids int32), so callers
  feed the same arrays as for FP32; a Cast node sits at every boundary between FP16 and FP32.

ONNX Runtime runs these files too: in FP16 on its CUDA provider; on a CPU in FP32 arithmetic on the FP16-rounded
weights (slower than FP32, and it does not round activations). ``rounding_emulation`` gives a graph that rounds every
FP16 tensor on a CPU: that is how provq-export and provq-calibrate measure what FP16 costs in ids and PSNR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from provq.edge_runtime.formats.graph import POST_QUANT_PROJ_SCOPE, QUANT_PROJ_SCOPE, QUANTIZER_SCOPE

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_OPS = frozenset(
    {"Add", "Clip", "Concat", "Conv", "Div", "Mul", "Relu", "Resize", "Sigmoid", "Sub", "Tanh",
     # layout changes and the DC-AE shortcuts' channel mean (their integer shape inputs keep their types)
     "DepthToSpace", "ReduceMean", "Reshape", "SpaceToDepth", "Squeeze", "Tile", "Transpose", "Unsqueeze"}
)  # fmt: skip
KEEP_FP32 = (QUANTIZER_SCOPE, QUANT_PROJ_SCOPE, POST_QUANT_PROJ_SCOPE)
SHAPE_INPUTS = {"Resize": {1, 2, 3}}  # roi, scales, sizes: not image data, their types are fixed by the operator


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the FP32 graph (inputs, initializers, Constant outputs, inferred values)."""
    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def convert_to_fp16(src: Path, dst: Path, keep_fp32: tuple[str, ...] = KEEP_FP32) -> None:
    """Write the FP16 version of the FP32 ONNX ``src`` to ``dst`` (see the module docstring for what stays FP32)."""
    model = onnx.load(str(src))
    graph = model.graph
    original = _float_types(model)
    constants = _constants(model)
    current: dict[str, int] = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    casts: dict[tuple[str, int], str] = {}
    halves: dict[str, str] = {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = f"{name}_{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}/Cast", to=to))
            casts[name, to] = out
        return casts[name, to]

    def half_constant(name: str) -> str:
        if name not in halves:
            halves[name] = f"{name}_fp16"
            added.append(numpy_helper.from_array(constants[name].astype(np.float16), halves[name]))
        return halves[name]

    for node in graph.node:
        if node.op_type == "Constant":
            nodes.append(node)
            current[node.output[0]] = original[node.output[0]]
            continue
        half = node.op_type in FP16_OPS and not node.name.startswith(keep_fp32)
        skip = SHAPE_INPUTS.get(node.op_type, set())
        for index, name in enumerate(node.input):
            if not name or index in skip or original.get(name) != FLOAT:
                continue
            if half and name in constants:
                node.input[index] = half_constant(name)
            elif name in constants:
                continue  # an FP32 constant for an FP32 node: unchanged
            elif current[name] != (HALF if half else FLOAT):
                node.input[index] = cast(name, HALF if half else FLOAT)
        nodes.append(node)
        for out in node.output:
            current[out] = HALF if half and original.get(out) == FLOAT else original.get(out, 0)
    for output in graph.output:
        if current.get(output.name) == HALF:  # the graph's own output stays FP32: rename, then cast back
            inner = f"{output.name}_fp16"
            for node in nodes:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}/Cast", to=FLOAT))
    used = {name for node in nodes for name in node.input}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    kept = [t for t in [*graph.initializer, *added] if t.name in used]
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept)
    onnx.checker.check_model(model, full_check=True)  # strict type inference: every node gets the types it takes
    onnx.save(model, str(dst))


def rounding_emulation(fp16_path: Path) -> onnx.ModelProto:
    """An FP32 graph that rounds like the FP16 graph at ``fp16_path``: every FP16 tensor is rounded to FP16 and back.

    ONNX Runtime's CPU provider has few FP16 kernels; it runs FP16 nodes in FP32 and casts only where FP16 and FP32
    parts meet, so running an FP16 file on a CPU rounds the weights but not the activations. This graph rounds both
    (after every node, more often than TensorRT, which keeps fused Conv + activation results in FP32), so ids and
    PSNR measured with it are a pessimistic stand-in for FP16 arithmetic. Run it with graph optimizations off, so
    that no Cast pair is folded away.
    """
    model = onnx.load(str(fp16_path))
    graph = model.graph
    types = _float_types(model)
    nodes: list[onnx.NodeProto] = []

    def round_trip(source: str, target: str) -> None:
        nodes.append(helper.make_node("Cast", [source], [f"{target}_as_fp16"], name=f"{target}/round", to=HALF))
        nodes.append(helper.make_node("Cast", [f"{target}_as_fp16"], [target], name=f"{target}/back", to=FLOAT))

    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if node.op_type == "Constant" and types.get(node.output[0]) == HALF:
            value = numpy_helper.to_array(node.attribute[0].t).astype(np.float32)
            nodes.append(helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                          value=numpy_helper.from_array(value)))  # fmt: skip
        elif to == HALF:
            round_trip(node.input[0], node.output[0])
        elif to == FLOAT and types.get(node.input[0]) == HALF:
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
        else:
            nodes.append(node)
            for index, out in enumerate(node.output):
                if types.get(out) == HALF:
                    node.output[index] = f"{out}_exact"
                    round_trip(node.output[index], out)
    initializers = [
        numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name) if t.data_type == HALF else t
        for t in graph.initializer
    ]
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model, full_check=True)
    return model
