"""A small shim over cuda-python's CUDA runtime API: device memory, copies, one stream, the device's name.

Only what the TensorRT runner and the engine builder need, with every call checked. cuda-python is imported lazily
(``from cuda.bindings import runtime``, falling back to ``from cuda import cudart`` for cuda-python < 12.6), so
importing this module costs nothing and works without it.

Memory model: device pointers are plain ``int`` addresses; host data are C-contiguous numpy arrays, passed to the
copies by address (``array.ctypes.data``). Copies are asynchronous on the given stream: the host array must stay
alive and untouched until ``stream_synchronize``. Host arrays are ordinary (pageable) numpy memory, so host-to-device
copies are staged by the driver; that is enough for frame-sized tensors.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .errors import EdgeError

MISSING = "cuda-python is not installed: pip install 'provq[edge]' (or use --backend onnxruntime)"


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the cudaError (e.g. cudaErrorMemoryAllocation)."""

    def __init__(self, call: str, error_name: str) -> None:
        super().__init__(f"{call} failed: {error_name}")
        self.call = call
        self.error_name = error_name


def import_cudart() -> ModuleType:
    """cuda-python's runtime module, or a one-line EdgeError saying how to install it."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise EdgeError(MISSING) from None
    return cudart


class CudaRuntime:
    """Checked wrappers around the handful of ``cudart`` calls provq uses (one device: the current one)."""

    def __init__(self, cudart: ModuleType) -> None:
        self._rt = cudart

    @classmethod
    def load(cls) -> CudaRuntime:
        """Import cuda-python (lazily) and wrap it."""
        return cls(import_cudart())

    # -- error checking -------------------------------------------------------------------------------------------

    def _error_name(self, err: Any) -> str:
        try:
            status, name = self._rt.cudaGetErrorName(err)
            if int(status) == 0:
                return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the name is only for the message; fall back to the enum's own name
            pass
        return str(getattr(err, "name", err))

    def check(self, call: str, result: Any) -> Any:
        """Unpack a cuda-python result tuple ``(cudaError_t, *values)``: the value(s), or CudaError naming the error."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != int(self._rt.cudaError_t.cudaSuccess):
            raise CudaError(call, self._error_name(err))
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    # -- memory ---------------------------------------------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` (at least 1) of device memory; returns the device address."""
        return int(self.check("cudaMalloc", self._rt.cudaMalloc(max(1, int(nbytes)))))

    def free(self, ptr: int) -> None:
        """Free device memory from ``malloc``."""
        self.check("cudaFree", self._rt.cudaFree(ptr))

    def memcpy_htod_async(self, dst: int, host: np.ndarray, stream: Any) -> None:
        """Copy a C-contiguous host array to device address ``dst`` on ``stream`` (keep ``host`` alive until sync)."""
        if not host.flags.c_contiguous:
            raise ValueError("memcpy_htod_async needs a C-contiguous array")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check("cudaMemcpyAsync", self._rt.cudaMemcpyAsync(dst, host.ctypes.data, host.nbytes, kind, stream))

    def memcpy_dtoh_async(self, host: np.ndarray, src: int, stream: Any) -> None:
        """Copy ``host.nbytes`` from device address ``src`` into a C-contiguous host array on ``stream``."""
        if not host.flags.c_contiguous or not host.flags.writeable:
            raise ValueError("memcpy_dtoh_async needs a writeable C-contiguous array")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check("cudaMemcpyAsync", self._rt.cudaMemcpyAsync(host.ctypes.data, src, host.nbytes, kind, stream))

    # -- streams --------------------------------------------------------------------------------------------------

    def stream_create(self) -> Any:
        """A new stream (a ``cudaStream_t``; ``int(stream)`` is the handle TensorRT's execute_async_v3 takes)."""
        return self.check("cudaStreamCreate", self._rt.cudaStreamCreate())

    def stream_synchronize(self, stream: Any) -> None:
        """Wait until all work queued on ``stream`` has finished."""
        self.check("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        """Destroy a stream from ``stream_create``."""
        self.check("cudaStreamDestroy", self._rt.cudaStreamDestroy(stream))

    # -- device ---------------------------------------------------------------------------------------------------

    def device_properties(self) -> tuple[str, tuple[int, int]]:
        """(name, (major, minor) compute capability) of the current device, e.g. ("Orin", (8, 7))."""
        device = self.check("cudaGetDevice", self._rt.cudaGetDevice())
        props = self.check("cudaGetDeviceProperties", self._rt.cudaGetDeviceProperties(device))
        raw = props.name
        name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return name.strip(), (int(props.major), int(props.minor))
