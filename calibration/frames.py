"""Picking representative calibration frames: diverse, not N consecutive ones, and a held-out set to measure on.

Frames come from any runtime source (a video, a folder, a glob, a camera...). Each frame gets a small descriptor
(a 12 x 12 colour thumbnail); greedy farthest-point sampling over the descriptors picks the N frames that cover the
data best, then the held-out evaluation frames are picked the same way among the frames not chosen. Frames are
resized to cover ``size`` and centre-cropped, then prepared with the runtime's own ``prepare`` function.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.preprocess import cover_crop, prepare, to_bgr_uint8
from provq.edge_runtime.sources import open_source

MIN_FRAMES = 64  # fewer calibration frames is an error
WARN_FRAMES = 300  # fewer is a warning


@dataclass
class FrameSets:
    """Model inputs (each 1 x 3 x H x W float32 RGB in [-1, 1]) for calibration and for held-out evaluation."""

    calibration: list[np.ndarray]
    evaluation: list[np.ndarray]
    fingerprint: str  # sha256 of the chosen calibration frames' prepared pixels (the data half of the cache key)
    candidates: int  # frames read from the source


def descriptor(bgr: np.ndarray) -> np.ndarray:
    """A 432-value float32 summary of a frame: its 12 x 12 colour thumbnail in [0, 1]."""
    return cv2.resize(bgr, (12, 12), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0


def farthest_points(features: np.ndarray, count: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``count`` rows of N x F ``features`` picked greedily, each farthest from those picked before.

    Rows in ``exclude`` are never picked but count as already covered. Deterministic (starts from row 0 or from the
    row farthest from the excluded ones).
    """
    n = features.shape[0]
    allowed = np.ones(n, dtype=bool)
    nearest = np.full(n, np.inf, dtype=np.float64)
    if exclude is not None and exclude.size:
        allowed[exclude] = False
        for i in exclude:
            nearest = np.minimum(nearest, ((features - features[i]) ** 2).sum(1))
    picked: list[int] = []
    for _ in range(min(count, int(allowed.sum()))):
        if np.isinf(nearest[allowed]).all():
            i = int(np.flatnonzero(allowed)[0])  # nothing covered yet: start from the first frame
        else:
            i = int(np.argmax(np.where(allowed, nearest, -1.0)))
        picked.append(i)
        allowed[i] = False
        nearest = np.minimum(nearest, ((features - features[i]) ** 2).sum(1))
    return np.array(picked, dtype=np.int64)


def select_frames(
    uris: list[str],
    count: int,
    *,
    downsample: int,
    size: tuple[int, int] = (256, 256),
    evaluation: int = 32,
    max_candidates: int | None = None,
) -> FrameSets:
    """Read up to ``max_candidates`` frames (default 4 x (count + evaluation)) from the sources; pick both sets."""
    width, height = size
    if width % downsample or height % downsample:
        raise EdgeError(f"--size {width}x{height} must be a multiple of the model's downsample factor {downsample}")
    limit = max_candidates or 4 * (count + evaluation)
    frames: list[np.ndarray] = []
    for uri in uris:
        with open_source(uri) as source:
            for frame in source:
                frames.append(cover_crop(to_bgr_uint8(frame.image), width, height))
                if len(frames) >= limit:
                    break
    if len(frames) < count + 1:
        raise EdgeError(
            f"--data gave {len(frames)} frames, not more than --frames {count}: add sources (--data can be repeated) "
            "or lower --frames"
        )
    features = np.stack([descriptor(f) for f in frames])
    chosen = farthest_points(features, count)
    held_out = farthest_points(features, evaluation, exclude=chosen)
    digest = hashlib.sha256()
    calibration = []
    for i in chosen:
        x = prepare(frames[i], downsample)[0]
        digest.update(x.tobytes())
        calibration.append(x)
    return FrameSets(
        calibration=calibration,
        evaluation=[prepare(frames[i], downsample)[0] for i in held_out],
        fingerprint=digest.hexdigest(),
        candidates=len(frames),
    )
