"""``TensorRTRunner``: one TensorRT engine, its execution context, device buffers and one CUDA stream; no torch.

    runner = TensorRTRunner(engine_path, manifest)      # checks the .engine.json sidecar, then deserializes
    ids = runner.run(images)                            # encoder: N x 3 x H x W float32 -> N x H/ds x W/ds int32
    images = runner.run(ids)                            # decoder: N x h x w int32 -> N x 3 x h*ds x w*ds float32
    runner.close()                                      # or: with TensorRTRunner(...) as runner: ...

Per call: the input shape is checked against the engine's optimization profile (one-line EdgeError outside it),
``set_input_shape``, the output shape is read back from the context, device buffers are (re)allocated only when a
tensor needs more bytes than it has, ``set_tensor_address``, host->device copy, ``execute_async_v3`` on the
runner's stream, device->host copy, stream synchronize. Calls on one runner must not overlap (one stream, one set of
buffers); use one runner per thread.

TensorRT versions: the name-based I/O API used here (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``get_tensor_dtype``, ``get_tensor_profile_shape``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) is the same from 10.0 through 11.x, so the runner has no version branches; TensorRT older
than 10 is refused at import (``engine_meta.import_tensorrt``). The engine itself is tied to one TensorRT version,
which the sidecar check enforces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .cuda_shim import CudaRuntime
from .engine_device import import_tensorrt, probe_device
from .engine_meta import EngineMeta, check_sidecar, rebuild_command
from .engine_shapes import ShapeProfile, format_shape, image_shape
from .errors import EdgeError
from .manifest import Manifest

log = logging.getLogger(__name__)

# TensorRT DataType member name -> numpy dtype (the types a provq engine can have at its I/O).
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
          "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """numpy dtype of a ``tensorrt.DataType`` (by member name, so no ``trt.nptype`` is needed)."""
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1]
    if name not in _NUMPY:
        raise EdgeError(f"engine I/O type {name} is not supported by the provq runner (expected FLOAT or INT32)")
    return np.dtype(_NUMPY[name])


class _Buffer:
    """One device allocation that grows on demand (never shrinks until close)."""

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, cuda: CudaRuntime, nbytes: int) -> bool:
        """Make room for ``nbytes``; True when it had to (re)allocate."""
        if self.ptr and nbytes <= self.nbytes:
            return False
        if self.ptr:
            cuda.free(self.ptr)
            self.ptr, self.nbytes = 0, 0
        self.ptr = cuda.malloc(nbytes)
        self.nbytes = max(1, nbytes)
        return True

    def release(self, cuda: CudaRuntime) -> None:
        if self.ptr:
            cuda.free(self.ptr)
        self.ptr, self.nbytes = 0, 0


class TensorRTRunner:
    """A deserialized provq engine (one input, one output) ready to run numpy arrays."""

    def __init__(self, engine_path: Path | str, manifest: Manifest, *, cuda: CudaRuntime | None = None) -> None:
        """Check the sidecar against this device, TensorRT and model, then deserialize and prepare the engine.

        ``cuda`` defaults to ``CudaRuntime.load()`` (cuda-python); EdgeError when tensorrt or cuda-python is
        missing, the engine is stale, or the engine's tensors are not the manifest's.
        """
        self.engine_path = Path(engine_path)
        self.manifest = manifest
        self._cuda: CudaRuntime | None = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}
        self._context: Any = None
        self._engine: Any = None
        self._runtime: Any = None

        trt = import_tensorrt(" (or use --backend onnxruntime)")
        cuda = cuda or CudaRuntime.load()
        self.device = probe_device(cuda)
        self.meta: EngineMeta = check_sidecar(self.engine_path, manifest, self.device, trt.__version__)
        self.part = self.meta.part
        self.precision = self.meta.precision

        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise EdgeError(
                f"TensorRT could not deserialize {self.engine_path} (see the log above): rebuild it with: "
                f"{rebuild_command(manifest, self.part, self.precision, dla_core=self.meta.dla_core)}"
            )
        self._engine = engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(name)
        want_in, want_out = manifest.tensor_names(self.part)
        if inputs != [want_in] or outputs != [want_out]:
            raise EdgeError(
                f"engine {self.engine_path.name} has inputs {inputs} and outputs {outputs}; the {self.part} in "
                f"{manifest.directory} has {want_in!r} -> {want_out!r}: rebuild the engine from this model"
            )
        self.input_name, self.output_name = want_in, want_out
        self.input_dtype = numpy_dtype(engine.get_tensor_dtype(want_in))
        self.output_dtype = numpy_dtype(engine.get_tensor_dtype(want_out))
        lo, opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(want_in, 0))
        self.profile = ShapeProfile(lo, opt, hi)

        context = engine.create_execution_context()
        if context is None:
            raise EdgeError(f"TensorRT could not create an execution context for {self.engine_path.name} (GPU memory?)")
        self._context = context
        self._cuda = cuda
        self._stream = cuda.stream_create()
        self._buffers = {want_in: _Buffer(), want_out: _Buffer()}
        log.debug("loaded %s (%s %s, profile %s)", self.engine_path.name, self.part, self.precision, self.profile)

    # -- running ------------------------------------------------------------------------------------------------

    def _refuse_shape(self, shape: tuple[int, ...]) -> EdgeError:
        """The one-line error for an input outside the profile, with a rebuild command whose profile covers it."""
        manifest, part = self.manifest, self.part
        if len(shape) != len(self.profile.min):
            return EdgeError(
                f"{part} input must have {len(self.profile.min)} dimensions "
                f"({format_shape(self.profile.min)}..{format_shape(self.profile.max)}), got shape {shape}"
            )
        lo = tuple(map(min, image_shape(manifest, part, self.profile.min), image_shape(manifest, part, shape)))
        hi = tuple(map(max, image_shape(manifest, part, self.profile.max), image_shape(manifest, part, shape)))
        opt = image_shape(manifest, part, self.profile.opt)
        cmd = rebuild_command(manifest, part, self.precision, ShapeProfile(lo, opt, hi), dla_core=self.meta.dla_core)
        return EdgeError(
            f"{part} input {format_shape(shape)} is outside the engine's profile {format_shape(self.profile.min)}.."
            f"{format_shape(self.profile.max)} ({self.engine_path.name}): rebuild it with: {cmd}"
        )

    def run(self, array: np.ndarray) -> np.ndarray:
        """Run the engine on one batch and return a new host array (layouts in the module docstring)."""
        if self._context is None or self._cuda is None:
            raise EdgeError(f"TensorRTRunner for {self.engine_path.name} is closed")
        array = np.asarray(array)
        if not np.can_cast(array.dtype, self.input_dtype, casting="same_kind"):
            raise EdgeError(f"{self.part} input must be {self.input_dtype}, got {array.dtype}")
        host_in = np.ascontiguousarray(array, dtype=self.input_dtype)
        shape = tuple(int(d) for d in host_in.shape)
        if not self.profile.contains(shape):
            raise self._refuse_shape(shape)

        ctx, cuda, stream = self._context, self._cuda, self._stream
        if not ctx.set_input_shape(self.input_name, shape):
            raise self._refuse_shape(shape)
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out_shape):
            raise EdgeError(f"TensorRT left the output shape {out_shape} unresolved for input {format_shape(shape)}")
        host_out = np.empty(out_shape, dtype=self.output_dtype)

        for name, nbytes in ((self.input_name, host_in.nbytes), (self.output_name, host_out.nbytes)):
            buffer = self._buffers[name]
            if buffer.ensure(cuda, nbytes):
                log.debug("allocated %d bytes for %s", buffer.nbytes, name)
            if not ctx.set_tensor_address(name, buffer.ptr):
                raise EdgeError(f"TensorRT refused the device address of {name!r}")
        cuda.memcpy_htod_async(self._buffers[self.input_name].ptr, host_in, stream)
        if not ctx.execute_async_v3(int(stream)):
            cuda.stream_synchronize(stream)
            raise EdgeError(f"TensorRT failed to run {self.engine_path.name} on {format_shape(shape)} (see the log)")
        cuda.memcpy_dtoh_async(host_out, self._buffers[self.output_name].ptr, stream)
        cuda.stream_synchronize(stream)
        return host_out

    # -- lifetime -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the device buffers and the stream and drop the context and engine (idempotent)."""
        cuda = self._cuda
        if cuda is not None:
            if self._stream is not None:
                cuda.stream_synchronize(self._stream)
            for buffer in self._buffers.values():
                buffer.release(cuda)
            if self._stream is not None:
                cuda.stream_destroy(self._stream)
        self._stream = None
        self._cuda = None
        self._context = None  # the context goes before the engine, the engine before the runtime
        self._engine = None
        self._runtime = None

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
