"""The FAKE cuda-python runtime module (``cuda.bindings.runtime`` / ``cuda.cudart``; tests only).

Device memory is bytearrays keyed by fake addresses in ``FakeState.memory``; copies to and from real host arrays go
by address (ctypes) and are refused when they overrun an allocation. Streams run work at once and count what is
pending until synchronized.
"""

from __future__ import annotations

import ctypes
import enum
from types import ModuleType, SimpleNamespace

from fake_trt_state import FakeState


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


def make_cudart(state: FakeState) -> ModuleType:
    """A fresh fake cuda-python runtime module working on ``state``'s device memory and streams."""
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
