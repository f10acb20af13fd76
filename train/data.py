"""Frame decoding and preprocessing: images, video frames and tar-shard members -> RGB uint8, crops, tensors.

Frames are RGB uint8 H x W x 3 numpy arrays; batches are B x 3 x crop x crop float32 in [-1, 1] (``to_tensor``).
Pixel levels become model inputs through the runtime's own functions (``provq.edge_runtime.formats.pixels`` and
``preprocess.to_bgr_uint8``), so training sees exactly the numbers the deployed model is fed.
Which files are read, and in what order, is decided by ``file_index`` (what exists) and ``streaming`` (who reads
what when).

Frames smaller than the crop: a frame whose shorter side is below ``--crop`` is upscaled (bilinear, aspect ratio
kept) so that its shorter side equals the crop before the random crop is taken. Checking every frame's size up front
cannot scale to millions of files, so the policy is applied per frame and the upscaled crops are counted.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from provq.edge_runtime.formats.pixels import rgb_to_model
from provq.edge_runtime.preprocess import to_bgr_uint8

from .errors import ProvqError


def sample_dir() -> Path:
    """The folder of shipped sample data (real photos in ``images/`` and ``clip.mp4``)."""
    return Path(str(resources.files("provq.edge_runtime") / "assets" / "sample"))


def to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    """Any OpenCV-decoded frame (gray, BGR, BGRA; 8 or 16 bit) -> H x W x 3 RGB uint8, converted as the runtime
    converts camera frames (16-bit to the nearest 8-bit level)."""
    return np.ascontiguousarray(to_bgr_uint8(frame)[..., ::-1])


def _checked(frame: np.ndarray | None) -> np.ndarray | None:
    if frame is None or frame.size == 0 or frame.dtype not in (np.uint8, np.uint16):
        return None
    return to_rgb_uint8(frame)


def read_image(path: str | Path) -> np.ndarray | None:
    """An image file as H x W x 3 RGB uint8, or None if OpenCV cannot decode it."""
    return _checked(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))


def decode_image(data: bytes) -> np.ndarray | None:
    """Encoded image bytes (a tar-shard member) as H x W x 3 RGB uint8, or None if they do not decode."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    return _checked(cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)) if buffer.size else None


def _open_video(path: str | Path) -> cv2.VideoCapture:
    """FFmpeg's own log lines are silenced unless OPENCV_FFMPEG_LOGLEVEL is set: callers report failures."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    return cv2.VideoCapture(str(path))


def video_frame_count(path: str | Path) -> int:
    """The container's frame count of a video (0 if it does not open or has no readable first frame)."""
    capture = _open_video(path)
    try:
        if not capture.isOpened() or not capture.grab():
            return 0
        return max(1, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        capture.release()


def read_video_frame(path: str | Path, index: int) -> np.ndarray | None:
    """Frame ``index`` (0-based) of a video as H x W x 3 RGB uint8, or None if it cannot be read.

    OpenCV's FFmpeg backend seeks to the key frame before ``index`` and decodes forward, so the frame equals the one
    a sequential decode returns.
    """
    capture = _open_video(path)
    try:
        if index and not capture.set(cv2.CAP_PROP_POS_FRAMES, index):
            return None
        ok, frame = capture.read()
        return _checked(frame) if ok else None
    finally:
        capture.release()


def video_positions(count: int, max_frames: int) -> int:
    """How many frames are sampled from a video of ``count`` frames: at most ``max_frames``, spread evenly."""
    return min(count, max_frames)


def video_frame_index(count: int, max_frames: int, position: int) -> int:
    """The frame number of sampled position ``position`` (0 <= position < video_positions) of a video."""
    return position * count // video_positions(count, max_frames)


def check_crop(crop: int, multiple: int) -> None:
    """The crop must be a positive multiple of the model's downsample factor."""
    if crop <= 0 or crop % multiple:
        raise ProvqError(f"--crop {crop} must be a positive multiple of the model's downsample factor {multiple}")


def random_crop(frame: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A seeded crop x crop x 3 window of an RGB uint8 frame, flipped left-right with probability 1/2.

    Returns (crop, upscaled): a frame whose shorter side is below ``crop`` is first upscaled (bilinear, aspect kept)
    so that its shorter side equals ``crop``.
    """
    h, w = frame.shape[:2]
    upscaled = min(h, w) < crop
    if upscaled:
        scale = crop / min(h, w)
        size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        h, w = frame.shape[:2]
    top = rng.integers(h - crop + 1)
    left = rng.integers(w - crop + 1)
    patch = frame[top : top + crop, left : left + crop]
    return (patch[:, ::-1] if rng.random() < 0.5 else patch), upscaled


def to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """B x H x W x 3 uint8 RGB (numpy, or a CPU tensor) -> B x 3 x H x W float32 in [-1, 1], through the runtime's
    ``rgb_to_model`` (the same float32 values the deployed model is fed)."""
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    return torch.from_numpy(rgb_to_model(array))


def center_crop(frame: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """The central square of a frame, at most ``size`` and floored to a multiple of ``multiple``."""
    h, w = frame.shape[:2]
    side = min(size, h, w) // multiple * multiple
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]
