"""The build side of the FAKE ``tensorrt`` module (tests only): logger, network, ONNX parser, optimization profile,
timing cache, builder config and builder.

The parser reads the JSON a test wrote with ``fake_onnx``; the builder records how it was configured in
``FakeState.builds``, refuses what real TensorRT (or provq's rules) would refuse, and returns a JSON "plan" that
tests/fake_trt_runtime.py deserializes.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from fake_trt_state import PLAN_MAGIC, FakeState

CACHE_MAGIC = b"FAKE-TIMING-CACHE\n"


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
