"""Inference backends behind one small interface: ONNX Runtime (CPU, CUDA, TensorRT EP) and native TensorRT.

    backend = open_backend("default", backend="auto", precision="int8")
    ids = backend.encode(images)      # N x 3 x H x W float32 RGB in [-1, 1] -> N x H/ds x W/ds int32
    ids, z = backend.encode_latents(images)   # also the latents N x D x h x w float32 (opened with latents=True)
    images = backend.decode(ids)      # N x h x w int32 -> N x 3 x h*ds x w*ds float32 in [-1, 1]
    backend.close()

``auto`` picks native TensorRT when ``tensorrt`` imports and MODEL_DIR/engines holds engines for the precision,
then ONNX Runtime on the GPU (TensorRT or CUDA execution provider) when that build is installed, then ONNX Runtime
on the CPU, and ``describe()`` says which. Precisions: fp32 and int8 run everywhere; fp16 runs through TensorRT and
through ONNX Runtime when the model directory has FP16 files (provq-export writes them; ONNX Runtime's CPU provider
runs them in FP32 arithmetic on FP16-rounded weights, slower than FP32: useful to check ids, not for speed). int8
uses provq-calibrate's Q/DQ files, except on ONNX Runtime's CPU provider, where the ``int8-cpu`` files of the same
calibration (ONNX Runtime's operator format, integer kernels) run when the model directory has them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import EdgeError
from .manifest import CPU_INT8, PRECISIONS, Manifest, load_manifest
from .stable import with_latents_output

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PROVIDER_NAMES = {"TensorrtExecutionProvider": "onnxruntime-tensorrt", "CUDAExecutionProvider": "onnxruntime-cuda"}


class Backend(Protocol):
    """What the pipeline and the benchmark need from a backend."""

    name: str  # e.g. "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"
    precision: str
    manifest: Manifest
    max_batch: int | None  # the most frames one encode/decode call takes (a TensorRT profile's); None: no limit

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(self, ids: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def _part_precisions(precision: str, encoder_precision: str | None) -> dict[str, str]:
    """{part: precision}: the decoder runs ``precision``, the encoder ``encoder_precision`` if given."""
    parts = {"encoder": encoder_precision or precision, "decoder": precision}
    for value in parts.values():
        if value not in PRECISIONS:
            raise EdgeError(f"unknown precision {value!r}: use one of {', '.join(PRECISIONS)}")
    return parts


def _describe_precisions(parts: dict[str, str]) -> str:
    if parts["encoder"] == parts["decoder"]:
        return parts["decoder"]
    return f"encoder {parts['encoder']} + decoder {parts['decoder']}"


def cpu_session(model: Path | str | bytes, *, exact: bool = False, threads: int | None = None) -> Any:
    """A plain ONNX Runtime CPU session (warnings silenced), for checks and measurements outside the pipeline.

    ``model`` is a file, or a serialized in-memory graph (``ModelProto.SerializeToString()``, such as an FP16
    rounding emulation), which runs with graph optimizations off so that none of its nodes is folded away.
    ``exact=True`` does the same for a file: a Q/DQ graph then runs as written, QuantizeLinear -> DequantizeLinear ->
    float Conv, which is the arithmetic of TensorRT's explicit quantization, instead of being fused into ONNX
    Runtime's integer kernels. Those kernels are not what TensorRT computes, and on x86 CPUs without VNNI their int16
    partial sums saturate: measured on 2026-12-02 on a 2-core AVX2 CPU, the fused Q/DQ encoder of the Haar-stem
    default model kept 31% of the FP32 ids on six sample photos, the same file run as written 82%.
    ``threads``: intra-op threads (one inter-op thread, as in ``OnnxRuntimeBackend``); None: ONNX Runtime's default.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if exact or isinstance(model, bytes):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, bytes):
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend:
    """Encoder and decoder sessions in ONNX Runtime (by default both at one precision)."""

    def __init__(
        self,
        manifest: Manifest,
        precision: str,
        *,
        encoder_precision: str | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        latents: bool = False,  # also output the encoder's latents (encode_latents), for stable tokens
    ) -> None:
        import onnxruntime as ort

        self.parts = _part_precisions(precision, encoder_precision)
        if "fp16" in self.parts.values() and not manifest.has("fp16"):
            raise EdgeError(
                f"{manifest.directory} has no FP16 files (exported before provq-export wrote them): export it again, "
                "or build a TensorRT engine with `provq-export engine MODEL_DIR --precision fp16`"
            )
        self.manifest = manifest
        self.precision = precision
        self.max_batch = None  # the exported graphs' batch dimension is dynamic
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
        self.file_sets = {
            part: CPU_INT8 if value == "int8" and cpu_only and manifest.has(CPU_INT8) else value
            for part, value in self.parts.items()
        }
        self._sessions = {}
        self._latents: str | None = None
        for part in ("encoder", "decoder"):
            path = manifest.path(self.file_sets[part], part)
            manifest.verify(path)
            graph = str(path)
            if latents and part == "encoder":
                graph, self._latents = with_latents_output(path)
            try:
                self._sessions[part] = ort.InferenceSession(graph, options, providers=self.providers)
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

    def encode_latents(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._latents is None:
            raise EdgeError("this backend was opened without latents=True")
        name_in, name_out = self._names["encoder"]
        ids, z = self._sessions["encoder"].run([name_out, self._latents], {name_in: images})
        return ids, z

    def describe(self) -> str:
        files = f", {CPU_INT8} files (ONNX Runtime's integer operators)" if CPU_INT8 in self.file_sets.values() else ""
        return f"{self.name} {_describe_precisions(self.parts)} ({', '.join(self.providers)}{files})"

    def close(self) -> None:
        self._sessions.clear()


class TensorRTBackend:
    """Native TensorRT: one engine per part from MODEL_DIR/engines, checked against this device before use."""

    def __init__(
        self, manifest: Manifest, precision: str, *, encoder_precision: str | None = None, engines: Path | None = None
    ) -> None:
        from .engine_device import import_tensorrt
        from .trt_runner import TensorRTRunner

        import_tensorrt(" (or use --backend onnxruntime)")  # say so before looking for engines it could not run
        self.manifest = manifest
        self.precision = precision
        self.parts = _part_precisions(precision, encoder_precision)
        self.name = "tensorrt"
        folder = engines or manifest.directory / "engines"
        self._runners = {}
        try:
            for part, value in self.parts.items():
                found = sorted(folder.glob(f"*.{part}.{value}.*.engine"))
                if not found:
                    raise EdgeError(
                        f"no {value} {part} engine in {folder}: build one on this device with "
                        f"`provq-export engine {manifest.directory} --part {part} --precision {value}`"
                    )
                self._runners[part] = TensorRTRunner(found[-1], manifest)
        except BaseException:
            self.close()
            raise
        # the batch dimension's maximum in both engines' profiles: cameras.py splits larger batches
        self.max_batch = min(runner.profile.max[0] for runner in self._runners.values())

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._runners["encoder"].run(images)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return self._runners["decoder"].run(ids)

    def describe(self) -> str:
        engines = ", ".join(r.engine_path.name for r in self._runners.values())
        return f"tensorrt {_describe_precisions(self.parts)} ({engines})"

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
    model: str | Path = "default",
    backend: str = "auto",
    precision: str = "fp32",
    *,
    encoder_precision: str | None = None,
    threads: int | None = None,
    latents: bool = False,
) -> Backend:
    """Load a model directory (``default``: the shipped model) on the chosen backend; logs which one runs.

    ``encoder_precision`` runs the encoder at another precision than ``precision`` (the decoder's), e.g. an FP32 or
    FP16 encoder that keeps FP32's token ids with an INT8 decoder. ``latents`` (stable tokens) needs the encoder's
    latents, which only ONNX Runtime sessions give (native TensorRT engines output ids only): ``auto`` then picks
    ONNX Runtime, and ``tensorrt`` is refused.
    """
    if backend not in BACKENDS:
        raise EdgeError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    _part_precisions(precision, encoder_precision)
    manifest = load_manifest(model)
    if backend == "tensorrt" and latents:
        raise EdgeError(
            "--stable-tokens needs the encoder's latents, which native TensorRT engines do not output: use "
            "--backend onnxruntime (which runs TensorRT through its execution provider where it is installed)"
        )
    native = backend == "auto" and not latents and _tensorrt_ready(manifest, encoder_precision or precision)
    if backend == "tensorrt" or native:
        chosen: Backend = TensorRTBackend(manifest, precision, encoder_precision=encoder_precision)
    else:
        chosen = OnnxRuntimeBackend(
            manifest, precision, encoder_precision=encoder_precision, threads=threads, latents=latents
        )
    log.info("backend: %s", chosen.describe())
    return chosen
