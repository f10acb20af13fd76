"""The backend of each benchmark row: ONNX Runtime, TensorRT, or the PyTorch checkpoint the model was exported from
(the one place the runtime touches torch: imported inside ``_open_pytorch``, only when that row runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, OnnxRuntimeBackend, TensorRTBackend
from .engine_device import TRT_MISSING, import_tensorrt
from .errors import EdgeError, ProvqError
from .manifest import Manifest, sha256_file

# Row precisions beyond the manifest's: "ENCODER-DECODER" splits, e.g. fp16-int8 (FP16 encoder, INT8 decoder).
SPLITS = {"fp16-int8": ("fp16", "int8")}


class Unavailable(Exception):
    """A row that cannot run on this machine; the message says why in a few words."""


class _TorchBackend:
    """The checkpoint a model was exported from, in PyTorch eager mode (CUDA when available, else CPU): its model of
    record, FP32 or, for a quantization-aware checkpoint, the INT8 fake-quantized network."""

    def __init__(self, model: Any, torch: Any, checkpoint: Path, precision: str) -> None:
        self.name = "pytorch"
        self.precision = precision
        self.max_batch = None
        self._torch = torch
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model = model.to(self._device)
        self._checkpoint = checkpoint

    def encode(self, images: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 RGB in [-1, 1] -> N x h x w int32."""
        with self._torch.inference_mode():
            ids = self._model.encode(self._torch.from_numpy(images).to(self._device))
        return ids.cpu().numpy().astype(np.int32, copy=False)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """N x h x w int32 -> N x 3 x H x W float32 in [-1, 1]."""
        with self._torch.inference_mode():
            images = self._model.decode(self._torch.from_numpy(ids).to(self._device))
        return images.float().cpu().numpy()

    def describe(self) -> str:
        kind = "fp32" if self.precision == "fp32" else f"{self.precision} fake-quantized"
        return f"pytorch {self._torch.__version__} {kind} on {self._device} ({self._checkpoint.name})"

    def close(self) -> None:
        self._model = None


def _open_pytorch(manifest: Manifest, precision: str, threads: int | None) -> _TorchBackend:
    """The checkpoint named in the manifest's ``source``; Unavailable without torch or without that checkpoint."""
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    if precision != manifest.model_of_record:
        raise Unavailable(f"the pytorch row runs the model of record only ({manifest.model_of_record})")
    try:
        from provq.train import checkpoint as ckpt
    except ImportError as err:
        raise Unavailable(f"provq.train does not import ({err})") from None
    source = manifest.data.get("source") or {}
    name = source.get("checkpoint")
    if not isinstance(name, str) or not name:
        raise Unavailable("the manifest does not name the checkpoint it was exported from")
    candidates = [manifest.directory / Path(name).name]
    if name == ckpt.DEFAULT_NAME:
        candidates.append(ckpt.default_checkpoint())
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise Unavailable(f"checkpoint {name} not found (put it in {manifest.directory})")
    expected = source.get("checkpoint_sha256")
    if expected and sha256_file(found) != expected:
        raise Unavailable(f"{found} is not the checkpoint this model was exported from (sha256 differs)")
    if threads:
        torch.set_num_threads(threads)
    try:
        model = ckpt.load_tokenizer(found)
    except ProvqError as err:
        raise Unavailable(str(err)) from None
    return _TorchBackend(model, torch, found, precision)


def open_row_backend(manifest: Manifest, backend: str, precision: str, threads: int | None) -> Backend:
    """The backend of one row (``precision`` from ROW_PRECISIONS), or Unavailable saying why it cannot run here."""
    encoder, decoder = SPLITS.get(precision, (precision, precision))
    if backend == "pytorch":
        return _open_pytorch(manifest, precision, threads)
    if backend == "tensorrt":
        try:
            import_tensorrt()
        except EdgeError as err:
            raise Unavailable("tensorrt not installed" if str(err).startswith(TRT_MISSING) else str(err)) from None
        try:
            return TensorRTBackend(manifest, decoder, encoder_precision=encoder)
        except EdgeError as err:
            raise Unavailable(str(err)) from None
    for part in dict.fromkeys((encoder, decoder)):
        if part not in manifest.precisions:
            fix = "export the model again" if part == "fp16" else "run provq-calibrate"
            raise Unavailable(f"no {part} files ({fix})")
    return OnnxRuntimeBackend(manifest, decoder, encoder_precision=encoder, threads=threads)
