"""The run side of the FAKE ``tensorrt`` module (tests only): runtime, engine and execution context.

The runtime deserializes the plans of tests/fake_trt_builder.py (refusing another TensorRT version's); the context
checks input shapes against the plan's profile and "executes" by reading its input from fake device memory and
writing ``fake_encode`` / ``fake_decode`` of it to its output.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np
from fake_trt_builder import FakeLogger
from fake_trt_state import PLAN_MAGIC, FakeState, fake_decode, fake_encode


class FakeEngine:
    def __init__(self, state: FakeState, trt: ModuleType, plan: dict[str, Any]) -> None:
        self.state, self.trt, self.plan = state, trt, plan
        self.names = [plan["input"][0], plan["output"][0]]

    @property
    def num_io_tensors(self) -> int:
        return 2

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> Any:
        mode = self.trt.TensorIOMode
        return mode.INPUT if name == self.names[0] else mode.OUTPUT if name == self.names[1] else mode.NONE

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType[self.plan["input" if name == self.names[0] else "output"][1]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert name == self.names[0] and profile_index == 0
        return [tuple(s) for s in self.plan["profile"]]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        lo, _, hi = self.engine.plan["profile"]
        if name != self.engine.names[0] or len(shape) != len(lo):
            return False
        if not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            return False
        self.input_shape = shape
        return True

    def _output_shape(self) -> tuple[int, ...]:
        f = self.engine.plan["factor"]
        if self.input_shape is None:
            return (-1, 3, -1, -1) if self.engine.plan["kind"] == "decoder" else (-1, -1, -1)
        if self.engine.plan["kind"] == "encoder":
            n, _, h, w = self.input_shape
            return (n, h // f, w // f)
        n, h, w = self.input_shape
        return (n, 3, h * f, w * f)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.engine.names[0]:
            return self.input_shape or tuple(self.engine.plan["profile"][0])
        return self._output_shape()

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.names:
            return False
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        state, plan = self.engine.state, self.engine.plan
        if not isinstance(stream_handle, int) or stream_handle not in state.streams:
            raise TypeError("execute_async_v3 takes the stream handle as an int")
        if self.input_shape is None or set(self.addresses) != set(self.engine.names):
            return False
        in_name, out_name = self.engine.names
        in_dtype = np.float32 if plan["input"][1] == "FLOAT" else np.int32
        nbytes = int(np.prod(self.input_shape)) * 4
        x = np.frombuffer(bytes(state.device_bytes(self.addresses[in_name], nbytes)[:nbytes]), dtype=in_dtype)
        x = x.reshape(self.input_shape)
        y = fake_encode(x, plan["factor"]) if plan["kind"] == "encoder" else fake_decode(x, plan["factor"])
        out = state.device_bytes(self.addresses[out_name], y.nbytes)
        out[: y.nbytes] = y.tobytes()
        state.executions += 1
        state.streams[stream_handle].pending += 1
        return True


class FakeRuntime:
    def __init__(self, state: FakeState, trt: ModuleType, logger: FakeLogger) -> None:
        self.state, self.trt = state, trt

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        data = bytes(data)
        if not data.startswith(PLAN_MAGIC):
            return None
        plan = json.loads(data[len(PLAN_MAGIC) :])
        if plan["version"] != self.trt.__version__:  # like the real thing: engines do not cross versions
            return None
        self.state.deserialized += 1
        return FakeEngine(self.state, self.trt, plan)
