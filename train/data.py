"""Training frames from image folders, video files or the shipped sample, with a held-out validation split.

Sources (``--data``):
    DIR      every image (jpg, jpeg, png, webp, bmp) and video (mp4, avi, mkv, mov, webm, m4v) below it, recursively
    FILE     one video file (or one image, with ``--val``)
    sample   the real photos and clip shipped with provq (``provq/edge_runtime/assets/sample``)

Validation: unless ``--val`` names its own source, every k-th image (k = round(1 / val_fraction)) and the last
``val_fraction`` of each video's sampled frames are held out; training never sees them.

Frames are RGB uint8 H x W x 3 in memory; batches are B x 3 x crop x crop float in [-1, 1]. Which frames, crops
and flips make up the batch of a step is a pure function of (seed, rank, step), so a resumed run sees exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import ProvqError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def sample_dir() -> Path:
    """The folder of shipped sample data (real photos in ``images/`` and ``clip.mp4``)."""
    return Path(str(resources.files("provq.edge_runtime") / "assets" / "sample"))


def to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    """Any OpenCV-decoded frame (gray, BGR, BGRA; 8 or 16 bit) -> H x W x 3 RGB uint8."""
    if frame.dtype == np.uint16:
        frame = ((frame.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # nearest level, as the runtime
    elif frame.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray | None:
    """An image file as H x W x 3 RGB uint8, or None if OpenCV cannot decode it."""
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None or frame.size == 0:
        return None
    return to_rgb_uint8(frame)


def read_video(path: Path, max_frames: int) -> list[np.ndarray]:
    """Up to ``max_frames`` frames spread evenly over a video, each H x W x 3 RGB uint8 (in time order).

    FFmpeg's own log lines are silenced unless OPENCV_FFMPEG_LOGLEVEL is set: a file that does not decode gets one
    clear error from the caller instead.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        stride = max(1, -(-total // max_frames)) if total > 0 else 1
        frames: list[np.ndarray] = []
        index = 0
        while len(frames) < max_frames and capture.grab():
            if index % stride == 0:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    frames.append(to_rgb_uint8(frame))
            index += 1
    finally:
        capture.release()
    return frames


def list_media(source: str | Path) -> tuple[list[Path], list[Path]]:
    """(images, videos) under a folder or file, sorted; a one-line ProvqError if there are none."""
    path = sample_dir() if str(source) == "sample" else Path(source).expanduser()
    if not path.exists():
        raise ProvqError(f"data path {path} does not exist: pass a folder of images, a video file or 'sample'")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    if path.is_file() and not images and not videos:
        raise ProvqError(
            f"{path} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a video ({', '.join(VIDEO_EXTENSIONS)})"
        )
    if not images and not videos:
        raise ProvqError(
            f"no images or videos found in {path}: it needs {', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)} files"
        )
    return images, videos


def _decode_images(paths: list[Path]) -> list[np.ndarray]:
    frames, bad = [], []
    for p in paths:
        frame = read_image(p)
        (bad.append(p) if frame is None else frames.append(frame))
    if paths and not frames:
        raise ProvqError(f"none of the {len(paths)} images could be decoded (e.g. {bad[0]}): are they corrupt?")
    if bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(bad), bad[0])
    return frames


def _decode_videos(paths: list[Path], max_frames: int) -> list[list[np.ndarray]]:
    clips = []
    for p in paths:
        frames = read_video(p, max_frames)
        if not frames:
            raise ProvqError(f"could not decode any frame of {p}: is the video corrupt or its codec unsupported?")
        clips.append(frames)
    return clips


@dataclass
class Splits:
    """Frames for training and validation, each a list of H x W x 3 RGB uint8 arrays."""

    train: list[np.ndarray]
    val: list[np.ndarray]


def load_splits(
    data: str, val: str | None = None, *, val_fraction: float = 0.15, max_video_frames: int = 300
) -> Splits:
    """Decode the training source (and validation source) into memory and split off validation frames."""
    images, videos = list_media(data)
    image_frames = _decode_images(images)
    clips = _decode_videos(videos, max_video_frames)
    if val is not None:
        val_images, val_videos = list_media(val)
        val_frames = _decode_images(val_images) + [
            f for clip in _decode_videos(val_videos, max_video_frames) for f in clip
        ]
        train = image_frames + [f for clip in clips for f in clip]
        return Splits(train=train, val=val_frames)
    every = max(2, round(1.0 / val_fraction))
    held_out = set(range(every // 2, len(image_frames), every)) or ({len(image_frames) // 2} - {0})
    train_frames = [f for i, f in enumerate(image_frames) if i not in held_out]
    val_frames = [f for i, f in enumerate(image_frames) if i in held_out]
    for clip in clips:
        held = max(1, round(len(clip) * val_fraction))
        gap = min(held, len(clip) - held - 1)  # frames between the splits, so neighbours do not leak into val
        if len(clip) - held - gap < 1:
            raise ProvqError("a video is too short to split into training and validation frames; pass --val")
        train_frames += clip[: len(clip) - held - gap]
        val_frames += clip[len(clip) - held :]
    if not train_frames or not val_frames:
        raise ProvqError("need at least 2 images (one is held out for validation) or a video; or pass --val DIR")
    return Splits(train=train_frames, val=val_frames)


def check_crop(frames: list[np.ndarray], crop: int, multiple: int) -> None:
    """Every training frame must hold a crop x crop window, and crop must be a multiple of the downsample."""
    if crop <= 0 or crop % multiple:
        raise ProvqError(f"--crop {crop} must be a positive multiple of the model's downsample factor {multiple}")
    smallest = min(min(f.shape[:2]) for f in frames)
    if smallest < crop:
        fit = smallest // multiple * multiple
        raise ProvqError(
            f"--crop {crop} is larger than the smallest training frame side ({smallest} px): use --crop {fit}"
        )


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """B x H x W x 3 uint8 RGB -> B x 3 x H x W float32 in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def center_crop(frame: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """The central square of a frame, at most ``size`` and floored to a multiple of ``multiple``."""
    h, w = frame.shape[:2]
    side = min(size, h, w) // multiple * multiple
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]


class CropSampler:
    """Seeded random crops and horizontal flips of training frames; batch(step) is a pure function of the step."""

    def __init__(self, frames: list[np.ndarray], crop: int, *, seed: int, rank: int = 0) -> None:
        self.frames = frames
        self.crop = crop
        self.seed = seed
        self.rank = rank

    def batch(self, step: int, batch_size: int, stream: int = 0) -> torch.Tensor:
        """B x 3 x crop x crop float32 in [-1, 1] for ``step``; ``stream`` separates other uses (k-means)."""
        rng = np.random.default_rng([self.seed, self.rank, stream, step])
        out = np.empty((batch_size, self.crop, self.crop, 3), dtype=np.uint8)
        for b, index in enumerate(rng.integers(len(self.frames), size=batch_size)):
            frame = self.frames[index]
            top = rng.integers(frame.shape[0] - self.crop + 1)
            left = rng.integers(frame.shape[1] - self.crop + 1)
            patch = frame[top : top + self.crop, left : left + self.crop]
            out[b] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return to_tensor(out)
