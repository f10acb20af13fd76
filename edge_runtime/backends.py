"""Inference backends behind one small interface: ONNX Runtime (CPU, CUDA, TensorRT EP) and native TensorRT.

    backend = open_backend("default", backend="auto", precision="int8")
    ids = backend.encode(images)      # N x 3 x H x W float32 RGB in [-1, 1] -> N x H/ds x W/ds int32
    images = backend.decode(ids)      # N x h x w int32 -> N x 3 x h*ds x w*ds float32 in [-1, 1]
    backend.close()

``auto`` picks native TensorRT when ``tensorrt`` imports and MODEL_DIR/engines holds engines for the precision,
then ONNX Runtime on the GPU (TensorRT or CUDA execution provider) when that build is installed, then ONNX Runtime
on the CPU, and ``describe()`` says which. Precisions: fp32 and int8 run everywhere; fp16 runs through TensorRT only
(an engine built with ``--precision fp16``). int8 uses provq-calibrate's Q/DQ files, except on ONNX Runtime's CPU
provider, where the ``int8-cpu`` files of the same calibration (ONNX Runtime's operator format, integer kernels) run
when the model directory has them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import EdgeError
from .manifest import CPU_INT8, PRECISIONS, Manifest, load_manifest

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PROVIDER_NAMES = {"TensorrtExecutionProvider": "onnxruntime-tensorrt", "CUDAExecutionProvider": "onnxruntime-cuda"}


class Backend(Protocol):
    """What the pipeline and the benchmark need from a backend."""

    name: str  # e.g. "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"
    precision: str
    manifest: Manifest

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(self, ids: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class OnnxRuntimeBackend:
    """Encoder and decoder sessions of one precision in ONNX Runtime."""

    def __init__(
        self, manifest: Manifest, precision: str, *, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        if precision == "fp16":
            raise EdgeError(
                "fp16 runs through TensorRT only: build an engine with `provq-export engine MODEL_DIR --precision "
                "fp16`, or use --precision fp32|int8 with ONNX Runtime"
            )
        self.manifest = manifest
        self.precision = precision
        available = ort.get_available_providers()
        self.providers = providers or [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # a smaller resident set on small devices
        # Worker threads sleep between runs instead of spinning, leaving the cores to capture and writing threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        cpu_only = self.providers == ["CPUExecutionProvider"]
        self.file_set = CPU_INT8 if precision == "int8" and cpu_only and manifest.has(CPU_INT8) else precision
        self._sessions = {}
        for part in ("encoder", "decoder"):
            path = manifest.path(self.file_set, part)
            manifest.verify(path)
            try:
                self._sessions[part] = ort.InferenceSession(str(path), options, providers=self.providers)
            except Exception as err:  # onnxruntime raises its own unrelated exception types
                raise EdgeError(f"ONNX Runtime cannot load {path} ({type(err).__name__}): re-export it") from None
        self._names = {part: manifest.tensor_names(part) for part in ("encoder", "decoder")}
        used = self._sessions["encoder"].get_providers()[0]
        self.name = PROVIDER_NAMES.get(used, "onnxruntime-cpu")

    def _run(self, part: str, array: np.ndarray) -> np.ndarray:
        name_in, name_out = self._names[part]
        return self._sessions[part].run([name_out], {name_in: array})[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._run("encoder", images)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return self._run("decoder", ids)

    def describe(self) -> str:
        files = ", QOperator int8-cpu files" if self.file_set == CPU_INT8 else ""
        return f"{self.name} {self.precision} ({', '.join(self.providers)}{files})"

    def close(self) -> None:
        self._sessions.clear()


class TensorRTBackend:
    """Native TensorRT: one engine per part from MODEL_DIR/engines, checked against this device before use."""

    def __init__(self, manifest: Manifest, precision: str, *, engines: Path | None = None) -> None:
        from .engine_meta import import_tensorrt
        from .trt_runner import TensorRTRunner

        import_tensorrt(" (or use --backend onnxruntime)")  # say so before looking for engines it could not run
        self.manifest = manifest
        self.precision = precision
        self.name = "tensorrt"
        folder = engines or manifest.directory / "engines"
        self._runners = {}
        try:
            for part in ("encoder", "decoder"):
                found = sorted(folder.glob(f"*.{part}.{precision}.*.engine"))
                if not found:
                    raise EdgeError(
                        f"no {precision} {part} engine in {folder}: build one on this device with "
                        f"`provq-export engine {manifest.directory} --precision {precision}`"
                    )
                self._runners[part] = TensorRTRunner(found[-1], manifest)
        except BaseException:
            self.close()
            raise

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._runners["encoder"].run(images)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return self._runners["decoder"].run(ids)

    def describe(self) -> str:
        return f"tensorrt {self.precision} ({', '.join(r.engine_path.name for r in self._runners.values())})"

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()


def _tensorrt_ready(manifest: Manifest, precision: str) -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return any((manifest.directory / "engines").glob(f"*.encoder.{precision}.*.engine"))


def open_backend(
    model: str | Path = "default", backend: str = "auto", precision: str = "fp32", *, threads: int | None = None
) -> Backend:
    """Load a model directory (``default``: the shipped model) on the chosen backend; logs which one runs."""
    if backend not in BACKENDS:
        raise EdgeError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EdgeError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    manifest = load_manifest(model)
    if backend == "tensorrt" or (backend == "auto" and _tensorrt_ready(manifest, precision)):
        chosen: Backend = TensorRTBackend(manifest, precision)
    else:
        chosen = OnnxRuntimeBackend(manifest, precision, threads=threads)
    log.info("backend: %s", chosen.describe())
    return chosen
