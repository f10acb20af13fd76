"""A deliberately small FAKE of the TensorRT and cuda-python runtime APIs that provq uses. It is not TensorRT.

It exists so that the engine builder, the engine cache and ``TensorRTRunner`` can be tested on a machine without a
GPU, TensorRT or CUDA. It computes nothing real:

- the "ONNX parser" reads a small JSON description written by the tests into ``*.onnx`` files (input name, shape,
  dtype, output, kind, factor), or fails with a parser error when the JSON says ``"error"``;
- the "builder" checks how it was configured (network flags, builder flags, profile, DLA, timing cache), records
  that in ``FakeState.builds`` and returns a JSON "plan";
- the "engine" runs by filling its output with a deterministic function of its input (``fake_encode`` /
  ``fake_decode`` below), reading and writing fake device memory, so buffer sizes, copies and addresses are checked;
- the "CUDA runtime" keeps device memory as bytearrays keyed by fake addresses, and copies to and from real host
  arrays by address (ctypes), refusing copies that overrun an allocation.

``make_modules(version)`` builds fresh ``tensorrt`` and ``cuda`` modules for TensorRT "10.3.0" or "11.4.1", whose
differences mirror the real ones provq cares about: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is 1 on 10.x
and 0 on 11.x (where networks are always strongly typed), and 11.x has no ``BuilderFlag.FP16`` / ``INT8``.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

IS_FAKE = True
PLAN_MAGIC = b"FAKE-TENSORRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE\n"


def fake_encode(images: np.ndarray, factor: int) -> np.ndarray:
    """The fake encoder: N x 3 x H x W float32 -> N x H/f x W/f int32, from each f x f block's mean."""
    n, c, h, w = images.shape
    blocks = images.reshape(n, c, h // factor, factor, w // factor, factor).astype(np.float64).mean(axis=(1, 3, 5))
    return (np.floor(blocks * 1000).astype(np.int64) % 997).astype(np.int32)


def fake_decode(ids: np.ndarray, factor: int) -> np.ndarray:
    """The fake decoder: N x h x w int32 -> N x 3 x h*f x w*f float32 (id / 1000 + channel index)."""
    up = np.repeat(np.repeat(ids, factor, axis=1), factor, axis=2).astype(np.float32) * np.float32(0.001)
    return (up[:, None] + np.arange(3, dtype=np.float32)[None, :, None, None]).astype(np.float32)


def fake_onnx(kind: str, input_name: str, output_name: str, factor: int, **extra: Any) -> str:
    """The JSON a test writes into a dummy ``.onnx`` file for the fake parser."""
    if kind == "encoder":
        io = {"input": [input_name, [-1, 3, -1, -1], "FLOAT"], "output": [output_name, "INT32"]}
    else:
        io = {"input": [input_name, [-1, -1, -1], "INT32"], "output": [output_name, "FLOAT"]}
    return json.dumps({"fake_onnx": kind, "factor": factor, **io, **extra})


@dataclass
class FakeState:
    """What the fake saw; tests read it."""

    version: str
    device_name: str = "Orin"
    compute_capability: tuple[int, int] = (8, 7)
    dla_cores: int = 2
    no_device: bool = False
    memory_limit: int = 1 << 30
    builds: list[dict[str, Any]] = field(default_factory=list)
    deserialized: int = 0
    executions: int = 0
    memory: dict[int, bytearray] = field(default_factory=dict)
    next_ptr: int = 0x7F0000000000
    mallocs: list[int] = field(default_factory=list)  # sizes, in order
    frees: int = 0
    streams: dict[int, FakeStream] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def malloc(self, nbytes: int) -> int:
        ptr = self.next_ptr
        self.next_ptr += (nbytes + 511) // 256 * 256
        self.memory[ptr] = bytearray(nbytes)
        self.mallocs.append(nbytes)
        return ptr

    def device_bytes(self, ptr: int, nbytes: int) -> bytearray:
        """The allocation at base address ``ptr``; AssertionError when it is unknown or too small."""
        if ptr not in self.memory:
            raise AssertionError(f"fake CUDA: {ptr:#x} is not a device allocation")
        if len(self.memory[ptr]) < nbytes:
            raise AssertionError(f"fake CUDA: {nbytes} bytes overrun the {len(self.memory[ptr])}-byte buffer")
        return self.memory[ptr]


# -- tensorrt ------------------------------------------------------------------------------------------------------


class FakeLogger:
    VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = 4, 3, 2, 1, 0

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


class FakeTensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class FakeNetwork:
    def __init__(self, trt: ModuleType, flags: int) -> None:
        if not isinstance(flags, int):
            raise TypeError("create_network takes an int of flag bits")
        self.flags = flags
        self.trt = trt
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.description: dict[str, Any] = {}

    @property
    def strongly_typed(self) -> bool:
        if self.trt.__version__.startswith("11."):
            return True
        return bool(self.flags & (1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> FakeTensor:
        return self.inputs[i]


class FakeParserError:
    def __init__(self, desc: str, node: str, op: str) -> None:
        self._desc, self._node, self._op = desc, node, op

    def desc(self) -> str:
        return self._desc

    def node_name(self) -> str:
        return self._node

    def node_operator(self) -> str:
        return self._op

    def code(self) -> int:
        return 8  # UNSUPPORTED_NODE

    def __str__(self) -> str:
        return f"In node {self._node} ({self._op}):\n{self._desc}"


class FakeOnnxParser:
    def __init__(self, network: FakeNetwork, logger: FakeLogger) -> None:
        self.network = network
        self.errors: list[FakeParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> FakeParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        try:
            desc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            self.errors.append(FakeParserError("could not read a fake ONNX description", "", ""))
            return False
        if "error" in desc:
            node, op, text = desc["error"]
            self.errors += [FakeParserError(text, node, op), FakeParserError("and another", "n2", "Foo")]
            return False
        dtype = self.network.trt.DataType
        name, shape, kind = desc["input"]
        self.network.inputs = [FakeTensor(name, tuple(shape), dtype[kind])]
        self.network.outputs = [FakeTensor(desc["output"][0], (), dtype[desc["output"][1]])]
        self.network.description = desc
        return True


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        if not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[name] = shapes


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class FakeBuilderConfig:
    def __init__(self, trt: ModuleType) -> None:
        self.trt = trt
        self.flags: set[Any] = set()
        self.pool_limits: dict[Any, int] = {}
        self.profiles: list[FakeProfile] = []
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1
        self.profiling_verbosity = None
        self.timing_cache: FakeTimingCache | None = None
        self.timing_cache_in = b""

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pool_limits[pool] = int(size)

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: Any) -> FakeTimingCache:
        return FakeTimingCache(bytes(memoryview(data)))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if cache.data and not cache.data.startswith(CACHE_MAGIC) and not ignore_mismatch:
            return False
        self.timing_cache = cache
        self.timing_cache_in = cache.data
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.timing_cache


class FakeBuilder:
    def __init__(self, state: FakeState, trt: ModuleType, logger: FakeLogger) -> None:
        self.state, self.trt = state, trt

    @property
    def num_DLA_cores(self) -> int:
        return self.state.dla_cores

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(self.trt, flags)

    def create_builder_config(self) -> FakeBuilderConfig:
        return FakeBuilderConfig(self.trt)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def _refuse(self, why: str) -> None:
        self.state.log.append(f"[E] {why}")

    def build_serialized_network(  # noqa: PLR0911 (one early return per refusal)
        self, network: FakeNetwork, config: FakeBuilderConfig
    ) -> bytes | None:
        trt = self.trt
        flag_names = sorted(f.name for f in config.flags)
        record = {
            "flags": network.flags,
            "strongly_typed": network.strongly_typed,
            "builder_flags": flag_names,
            "workspace": config.pool_limits.get(trt.MemoryPoolType.WORKSPACE),
            "profiles": [p.shapes for p in config.profiles],
            "device_type": config.default_device_type.name,
            "dla_core": config.DLA_core,
            "timing_cache_in": config.timing_cache_in,
            "verbosity": getattr(config.profiling_verbosity, "name", None),
        }
        self.state.builds.append(record)
        if network.strongly_typed and {"FP16", "INT8"} & set(flag_names):
            return self._refuse("precision builder flags are not allowed on a strongly typed network")
        if "INT8" in flag_names:
            return self._refuse("provq never uses the implicit INT8 flag")
        if len(config.profiles) != 1:
            return self._refuse("expected one optimization profile")
        tensor = network.inputs[0]
        if tensor.name not in config.profiles[0].shapes:
            return self._refuse(f"no profile for dynamic input {tensor.name}")
        lo, opt, hi = config.profiles[0].shapes[tensor.name]
        if config.default_device_type == trt.DeviceType.DLA and not (lo == opt == hi):
            return self._refuse("DLA needs static shapes")
        if config.timing_cache is None:
            return self._refuse("no timing cache set")
        old = config.timing_cache.data or CACHE_MAGIC
        config.timing_cache.data = old + f"tactics for {tensor.name} {lo}..{hi}\n".encode()
        plan = {
            "version": trt.__version__,
            "kind": network.description["fake_onnx"],
            "factor": network.description["factor"],
            "input": [tensor.name, tensor.dtype.name],
            "output": [network.outputs[0].name, network.outputs[0].dtype.name],
            "profile": [lo, opt, hi],
        }
        return PLAN_MAGIC + json.dumps(plan).encode()


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


def _make_tensorrt(state: FakeState) -> ModuleType:
    major = int(state.version.split(".")[0])
    trt = ModuleType("tensorrt", "FAKE tensorrt for tests (tests/fake_tensorrt.py); computes nothing real")
    trt.__version__ = state.version
    trt.IS_FAKE = True
    trt.Logger = FakeLogger
    if major == 10:
        network_flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        flags = ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "STRICT_TYPES"]
    else:
        network_flags = {"STRONGLY_TYPED": 0}  # deprecated and ignored in 11.x; note the different value
        flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "TF32"]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "TACTIC_DRAM"])
    trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64"])
    trt.Builder = functools.partial(FakeBuilder, state, trt)
    trt.Runtime = functools.partial(FakeRuntime, state, trt)
    trt.OnnxParser = FakeOnnxParser
    return trt


# -- cuda-python (runtime) -----------------------------------------------------------------------------------------


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeStream:
    """A cudaStream_t stand-in: ``int(stream)`` is its handle. Work runs at once; ``pending`` counts work queued
    since the last synchronize, so a test can see that a caller synchronized before reading results."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.pending = 0

    def __int__(self) -> int:
        return self.handle


def _make_cudart(state: FakeState) -> ModuleType:
    rt = ModuleType("cuda.bindings.runtime", "FAKE cuda-python runtime for tests (tests/fake_tensorrt.py)")
    ok = cudaError_t.cudaSuccess
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = cudaMemcpyKind

    def cudaGetErrorName(err: cudaError_t) -> tuple[cudaError_t, bytes]:
        return ok, cudaError_t(err).name.encode()

    def cudaMalloc(nbytes: int) -> tuple[cudaError_t, int]:
        if nbytes > state.memory_limit:
            return cudaError_t.cudaErrorMemoryAllocation, 0
        return ok, state.malloc(int(nbytes))

    def cudaFree(ptr: int) -> tuple[cudaError_t]:
        if state.memory.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        state.frees += 1
        return (ok,)

    def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: FakeStream) -> tuple:
        if int(stream) not in state.streams or not isinstance(dst, int) or not isinstance(src, int):
            return (cudaError_t.cudaErrorInvalidValue,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            state.device_bytes(dst, count)[:count] = ctypes.string_at(src, count)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            ctypes.memmove(dst, bytes(state.device_bytes(src, count)[:count]), count)
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        state.streams[int(stream)].pending += 1
        return (ok,)

    def cudaStreamCreate() -> tuple[cudaError_t, FakeStream]:
        stream = FakeStream(0x5000 + len(state.streams) + 1)
        state.streams[stream.handle] = stream
        return ok, stream

    def cudaStreamSynchronize(stream: FakeStream) -> tuple[cudaError_t]:
        if int(stream) not in state.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        state.streams[int(stream)].pending = 0
        return (ok,)

    def cudaStreamDestroy(stream: FakeStream) -> tuple[cudaError_t]:
        return (ok,) if state.streams.pop(int(stream), None) else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGetDevice() -> tuple[cudaError_t, int]:
        return (cudaError_t.cudaErrorNoDevice, 0) if state.no_device else (ok, 0)

    def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, SimpleNamespace]:
        major, minor = state.compute_capability
        name = state.device_name.encode().ljust(256, b"\0")
        return ok, SimpleNamespace(name=name, major=major, minor=minor)

    for fn in (cudaGetErrorName, cudaMalloc, cudaFree, cudaMemcpyAsync, cudaStreamCreate, cudaStreamSynchronize,
               cudaStreamDestroy, cudaGetDevice, cudaGetDeviceProperties):  # fmt: skip
        setattr(rt, fn.__name__, fn)
    return rt


# -- installing ----------------------------------------------------------------------------------------------------


def make_modules(
    version: str = "10.3.0", cuda_layout: str = "bindings"
) -> tuple[dict[str, ModuleType | None], FakeState]:
    """Fresh fake modules for ``sys.modules`` and the state they share.

    ``cuda_layout``: "bindings" (``cuda.bindings.runtime``, cuda-python >= 12.6), "old" (``cuda.cudart`` only), or
    "none" (cuda-python missing: the ``cuda`` entries are None, so importing them fails).
    """
    state = FakeState(version=version)
    modules: dict[str, ModuleType | None] = {"tensorrt": _make_tensorrt(state)}
    cudart = _make_cudart(state)
    if cuda_layout == "bindings":
        cuda, bindings = ModuleType("cuda"), ModuleType("cuda.bindings")
        cuda.__path__, bindings.__path__ = [], []  # packages, so submodule imports resolve through sys.modules
        bindings.runtime = cudart
        cuda.bindings = bindings
        modules.update({"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart})
    elif cuda_layout == "old":
        cuda = ModuleType("cuda")
        cuda.__path__ = []
        cuda.cudart = cudart
        modules.update({"cuda": cuda, "cuda.cudart": cudart, "cuda.bindings": None, "cuda.bindings.runtime": None})
    else:
        modules.update({"cuda": None, "cuda.bindings": None, "cuda.bindings.runtime": None, "cuda.cudart": None})
    return modules, state


def install(version: str = "10.3.0", cuda_layout: str = "bindings") -> FakeState:
    """Put the fakes into ``sys.modules`` for good (for subprocess tests; pytest tests use the fixture instead)."""
    modules, state = make_modules(version, cuda_layout)
    sys.modules.update(modules)
    return state
