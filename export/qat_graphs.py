"""INT8 ONNX graphs of a quantization-aware model (``provq-train --qat``) with its trained scales: no calibration.

From the FP32 graph of the same weights and ``provq.train.qat.int8_layers`` (per fake-quantized Conv module: input
scale, per-channel weight scale, int8 weights; scale = amax / 127), each of those Conv nodes, found by its weight
initializer ``<module>.weight``, is rewritten; every other node stays as it is (the nearest-code search, the
codebook lookup and the Convs the QAT rule keeps FP32):

``qdq_graph`` (TensorRT's explicit quantization, and the model of record in ONNX)::

    x -> QuantizeLinear(s_x, int8 0) -> DequantizeLinear -> Conv(DequantizeLinear(w_int8, s_w, axis 0), bias)
      [-> QuantizeLinear(s_y, int8 0) -> DequantizeLinear]          (where the Conv's output is quantized)

``cpu_graph`` (ONNX Runtime CPU, the ``int8-cpu`` files): the same integers through an integer convolution. Where
the output is quantized (QAT version 2: 7-bit weights, biases on the int32 grid), ONNX Runtime's requantizing
convolution on uint8 activations (the int8 codes shifted by 128) and int8 weights::

    x -> QuantizeLinear(s_x, uint8 128) -> QLinearConv(w_int8, zero point 0, bias b / (s_x * s_w) as int32,
         s_y, uint8 128) -> DequantizeLinear(s_y, 128)

otherwise (version 1 checkpoints: 8-bit weights, float outputs) the int32 one, both operands shifted to uint8::

    x -> QuantizeLinear(s_x, uint8 128) -> ConvInteger(w_int8 + 128 as uint8, zero points 128) -> int32
      -> Cast float -> Mul(s_x * s_w) -> Add(bias)

Both compute the fake-quantized network's integer sums exactly on any x86 CPU: ONNX Runtime's uint8 x int8 kernels
use VPMADDUBSW on CPUs without VNNI, whose int16 sums of two products cannot overflow with 7-bit weights (2 x 255 x
64 < 32768) but can with 8-bit ones, which is why version 1 takes the uint8 x uint8 kernel (it widens first; ONNX
Runtime's quantization docs). QLinearConv then differs from the fake-quantized network only in float rounding at
the requantization. Hand-written because ONNX Runtime's quantizer computes its own weight scales
from the weights and quantizes more tensors (SiLU, Add) than the trained network did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from provq.edge_runtime.formats.errors import ProvqError

SHIFT = 128  # int8 -> uint8 offset of the CPU graph's operands


def _rewrite(model: onnx.ModelProto, layers: dict[str, dict[str, Any]], cpu: bool) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    nodes, used, drop = [], set(), set()
    for node in graph.node:
        weight = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else ""
        name = weight[: -len(".weight")] if weight.endswith(".weight") else None
        if name not in layers:
            nodes.append(node)
            continue
        used.add(name)
        drop.update(node.input[1:] if cpu else node.input[1:2])  # the CPU graph adds its own NCHW bias
        layer = layers[name]
        fp32 = numpy_helper.to_array(inits[weight])
        if fp32.shape != layer["weight_int8"].shape:
            raise ProvqError(f"{name}: graph weight {fp32.shape} is not the QAT weight's {layer['weight_int8'].shape}")
        nodes += _cpu_conv(node, name, layer, inits, graph) if cpu else _qdq_conv(node, name, layer, graph)
    missing = set(layers) - used
    if missing:
        raise ProvqError(f"fake-quantized modules {sorted(missing)} have no Conv in the graph: re-export")
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if cpu:
        del out.opset_import[:]
        out.opset_import.extend([helper.make_opsetid("", model.opset_import[0].version)])
    onnx.checker.check_model(out)
    return out


def _add(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _scalar(layer: dict[str, Any], key: str) -> np.ndarray:
    return np.asarray(layer[key], np.float32).reshape(())


def _qdq_conv(node: onnx.NodeProto, name: str, layer: dict[str, Any], graph: onnx.GraphProto) -> list:
    channels = layer["weight_int8"].shape[0]
    s_x = _add(graph, f"{name}.input_scale", _scalar(layer, "input_scale"))
    z_x = _add(graph, f"{name}.input_zero_point", np.zeros((), np.int8))
    w_q = _add(graph, f"{name}.weight_quantized", layer["weight_int8"])
    s_w = _add(graph, f"{name}.weight_scale", layer["weight_scale"].astype(np.float32))
    z_w = _add(graph, f"{name}.weight_zero_point", np.zeros(channels, np.int8))
    x = node.input[0]
    conv = onnx.NodeProto()
    conv.CopyFrom(node)
    conv.input[0], conv.input[1] = f"{name}.input_dequantized", f"{name}.weight_dequantized"
    out = [
        helper.make_node("QuantizeLinear", [x, s_x, z_x], [f"{name}.input_quantized"], name=f"{name}.input_Q"),
        helper.make_node("DequantizeLinear", [f"{name}.input_quantized", s_x, z_x], [conv.input[0]],
                         name=f"{name}.input_DQ"),
        helper.make_node("DequantizeLinear", [w_q, s_w, z_w], [conv.input[1]], name=f"{name}.weight_DQ", axis=0),
        conv,
    ]  # fmt: skip
    if "output_scale" in layer:
        y = node.output[0]
        conv.output[0] = f"{name}.output_float"
        s_y = _add(graph, f"{name}.output_scale", _scalar(layer, "output_scale"))
        out += [
            helper.make_node("QuantizeLinear", [conv.output[0], s_y, z_x], [f"{name}.output_quantized"],
                             name=f"{name}.output_Q"),
            helper.make_node("DequantizeLinear", [f"{name}.output_quantized", s_y, z_x], [y], name=f"{name}.output_DQ"),
        ]  # fmt: skip
    return out


def _cpu_conv(
    node: onnx.NodeProto, name: str, layer: dict[str, Any], inits: dict[str, Any], graph: onnx.GraphProto
) -> list:
    channels = layer["weight_int8"].shape[0]
    s_x = _add(graph, f"{name}.input_scale", _scalar(layer, "input_scale"))
    z = _add(graph, f"{name}.zero_point", np.asarray(SHIFT, np.uint8).reshape(()))
    quantize = helper.make_node("QuantizeLinear", [node.input[0], s_x, z], [f"{name}.input_uint8"],
                                name=f"{name}.input_Q")  # fmt: skip
    if "output_scale" in layer:
        return [quantize, *_requantizing_conv(node, name, layer, inits, graph)]
    w_u8 = _add(graph, f"{name}.weight_uint8", (layer["weight_int8"].astype(np.int16) + SHIFT).astype(np.uint8))
    combined = _accumulator_scale(layer)
    attributes = _attributes(node)
    scale = _add(graph, f"{name}.accumulator_scale", combined.reshape(1, channels, 1, 1))
    integer = helper.make_node("ConvInteger", [f"{name}.input_uint8", w_u8, z, z], [f"{name}.int32"],
                               name=f"{name}.ConvInteger", **attributes)  # fmt: skip
    out = [
        quantize,
        integer,
        helper.make_node("Cast", [f"{name}.int32"], [f"{name}.accumulated"], name=f"{name}.Cast", to=TensorProto.FLOAT),
    ]
    scaled = node.output[0] if len(node.input) < 3 else f"{name}.scaled"
    out.append(helper.make_node("Mul", [f"{name}.accumulated", scale], [scaled], name=f"{name}.Mul"))
    if len(node.input) >= 3:
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(1, channels, 1, 1)
        b = _add(graph, f"{name}.bias_nchw", bias)
        out.append(helper.make_node("Add", [scaled, b], [node.output[0]], name=f"{name}.Add"))
    return out


def _accumulator_scale(layer: dict[str, Any]) -> np.ndarray:
    """s_x * s_w per output channel (float32): the value of one unit of the int32 sum."""
    return (layer["input_scale"].astype(np.float32) * layer["weight_scale"].astype(np.float32)).astype(np.float32)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _requantizing_conv(
    node: onnx.NodeProto, name: str, layer: dict[str, Any], inits: dict[str, Any], graph: onnx.GraphProto
) -> list:
    """QLinearConv on the CPU graph's uint8 operands (module docstring) and the DequantizeLinear of its output."""
    channels = layer["weight_int8"].shape[0]
    inputs = [f"{name}.input_uint8", f"{name}.input_scale", f"{name}.zero_point",
              _add(graph, f"{name}.weight_int8", layer["weight_int8"]),
              _add(graph, f"{name}.weight_scale", layer["weight_scale"].astype(np.float32)),
              _add(graph, f"{name}.weight_zero_point", np.zeros(channels, np.int8)),
              _add(graph, f"{name}.output_scale", _scalar(layer, "output_scale")), f"{name}.zero_point"]  # fmt: skip
    if len(node.input) >= 3:
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        steps = np.rint(bias / _accumulator_scale(layer).astype(np.float64))
        inputs.append(_add(graph, f"{name}.bias_int32", steps.astype(np.int32)))
    return [
        helper.make_node("QLinearConv", inputs, [f"{name}.output_uint8"], name=f"{name}.QLinearConv",
                         **_attributes(node)),
        helper.make_node("DequantizeLinear", [f"{name}.output_uint8", inputs[6], inputs[2]], [node.output[0]],
                         name=f"{name}.output_DQ"),
    ]  # fmt: skip


def qdq_graph(fp32: onnx.ModelProto, layers: dict[str, dict[str, Any]]) -> onnx.ModelProto:
    """The Q/DQ graph for TensorRT (module docstring) of ``fp32`` with the trained scales of ``layers``."""
    return _rewrite(fp32, layers, cpu=False)


def cpu_graph(fp32: onnx.ModelProto, layers: dict[str, dict[str, Any]]) -> onnx.ModelProto:
    """The ConvInteger graph for ONNX Runtime CPU (module docstring), the same integers as ``qdq_graph``."""
    return _rewrite(fp32, layers, cpu=True)
