"""Time ONNX Runtime's CPU integer convolutions by operand type, against FP32, on this machine.

Why the quantization-aware CPU files use QLinearConv with uint8 activations and int8 weights (docs/INT8.md): the
speed of ONNX Runtime's INT8 convolution depends on its operand types and on the CPU (VNNI or not). One
convolution node, C -> C channels, 3 x 3, padding 1, on a 1 x C x H x W input (the default: 160 channels at 72 x 96,
a middle layer of the default model on a 768 x 576 frame), random operands; prints the median of ``--runs`` timed
calls after 3 untimed ones, in ms, for FP32 Conv, QLinearConv with uint8 x uint8, uint8 x int8, int8 x int8
operands, and ConvInteger uint8 x uint8 (int32 output).

    python tools/int8_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from provq.edge_runtime.backends import cpu_session
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.preprocess import parse_size

TYPES = {"uint8": (TensorProto.UINT8, np.uint8, 128), "int8": (TensorProto.INT8, np.int8, 0)}


def _model(op: str, x_type: str, w_type: str, channels: int, shape: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    kernel = (channels, channels, 3, 3)
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    dims = [1, channels, *shape]
    if op == "Conv":
        inits = [numpy_helper.from_array(rng.standard_normal(kernel).astype(np.float32), "w")]
        node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
        io = (TensorProto.FLOAT, TensorProto.FLOAT)
    else:
        (xt, xd, xz), (_, wd, wz) = TYPES[x_type], TYPES[w_type]
        w = (rng.integers(-64, 64, kernel) + wz).astype(wd)  # 7-bit codes, shifted to uint8 where w is uint8
        inits = [numpy_helper.from_array(np.array(xz, xd), "xz"), numpy_helper.from_array(w, "w"),
                 numpy_helper.from_array(np.array(wz, wd), "wz")]  # fmt: skip
        if op == "QLinearConv":
            inits += [numpy_helper.from_array(np.float32(0.01), "xs"), numpy_helper.from_array(np.float32(0.05), "ys"),
                      numpy_helper.from_array(np.full(channels, 0.001, np.float32), "ws")]  # fmt: skip
            node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "xz"], ["y"], **attrs)
            io = (xt, xt)
        else:
            node = helper.make_node(op, ["x", "w", "xz", "wz"], ["y"], **attrs)
            io = (xt, TensorProto.INT32)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", io[0], dims)],
                              [helper.make_tensor_value_info("y", io[1], dims)], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _time(model: bytes, x: np.ndarray, runs: int, threads: int | None) -> float:
    session = cpu_session(model, threads=threads)
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except EdgeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=160)
    p.add_argument("--size", type=_size, default="96x72", help="W x H of the input (default: %(default)s)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    w, h = args.size
    rng = np.random.default_rng(1)
    rows = [("Conv", "float32", "float32"), ("QLinearConv", "uint8", "uint8"), ("QLinearConv", "uint8", "int8"),
            ("QLinearConv", "int8", "int8"), ("ConvInteger", "uint8", "uint8")]  # fmt: skip
    fp32 = None
    for op, x_type, w_type in rows:
        if op == "Conv":
            x = rng.standard_normal((1, args.channels, h, w)).astype(np.float32)
        else:
            low = -128 if x_type == "int8" else 0
            x = rng.integers(low, low + 256, (1, args.channels, h, w)).astype(TYPES[x_type][1])
        ms = _time(_model(op, x_type, w_type, args.channels, (h, w)), x, args.runs, args.threads)
        fp32 = fp32 or ms
        print(f"{op:12s} x {x_type:7s} w {w_type:7s} {ms:8.2f} ms  {fp32 / ms:5.2f}x FP32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
