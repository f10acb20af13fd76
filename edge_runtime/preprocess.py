"""Frame preprocessing shared by the live runtime and INT8 calibration (one function, so both see the same input).

    frame   H x W (gray), H x W x 1, H x W x 3 (BGR, OpenCV's order) or H x W x 4 (BGRA); uint8 or uint16
    model   1 x 3 x H' x W' float32 RGB in [-1, 1], H' and W' multiples of the model's downsample factor
    output  H x W x 3 uint8 BGR at the frame's own size (``restore``)

Fitting a frame to a multiple of the downsample factor is an option recorded in the token stream header:
    pad     replicate the right and bottom edges up to the next multiple; restore crops them off (exact size)
    crop    keep the centred largest multiple; restore replicates the border back to the original size
    resize  resize to the nearest multiple (at least one); restore resizes back
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import EdgeError
from .formats.pixels import model_to_levels, rgb_to_model, uint16_to_uint8

FITS = ("pad", "crop", "resize")


@dataclass(frozen=True)
class Geometry:
    """How one frame size maps onto the model's input size; enough to undo the fit."""

    height: int  # the frame's own size
    width: int
    model_height: int  # what the model sees (multiples of the downsample factor)
    model_width: int
    fit: str  # one of FITS
    top: int = 0  # crop offsets (fit == "crop")
    left: int = 0

    @classmethod
    def plan(cls, height: int, width: int, downsample: int, fit: str = "pad") -> Geometry:
        """The model size for an H x W frame; a one-line EdgeError for an unknown fit or an empty frame."""
        if fit not in FITS:
            raise EdgeError(f"unknown fit {fit!r}: use one of {', '.join(FITS)}")
        if height < 1 or width < 1:
            raise EdgeError(f"empty frame ({height} x {width}): the source gave no pixels")
        ds = downsample
        if fit == "pad":
            return cls(height, width, -(-height // ds) * ds, -(-width // ds) * ds, fit)
        if fit == "resize":
            return cls(height, width, max(ds, round(height / ds) * ds), max(ds, round(width / ds) * ds), fit)
        mh, mw = height // ds * ds, width // ds * ds
        if mh == 0 or mw == 0:
            raise EdgeError(
                f"frame {width}x{height} is smaller than one {ds}x{ds} token: use --fit pad or resize instead of crop"
            )
        return cls(height, width, mh, mw, fit, (height - mh) // 2, (width - mw) // 2)


def to_bgr_uint8(frame: np.ndarray) -> np.ndarray:
    """Any supported frame -> H x W x 3 uint8 BGR (16-bit scaled by 1/257, gray replicated, alpha dropped)."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise EdgeError("empty frame: the source gave no pixels")
    if frame.dtype == np.uint16:
        frame = uint16_to_uint8(frame)
    elif frame.dtype != np.uint8:
        raise EdgeError(f"frames must be uint8 or uint16, got {frame.dtype}: convert the source to 8 or 16 bit")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise EdgeError(f"unsupported frame shape {frame.shape}: expected H x W, H x W x 3 or H x W x 4")


def resize_to(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize H x W x C to height x width (area when shrinking, linear when growing)."""
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    shrink = width * height < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def cover_crop(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8 -> height x width x 3: scaled to cover width x height, then centre-cropped (no distortion)."""
    scale = max(width / bgr.shape[1], height / bgr.shape[0])
    scaled = resize_to(bgr, max(width, round(bgr.shape[1] * scale)), max(height, round(bgr.shape[0] * scale)))
    top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return np.ascontiguousarray(scaled[top : top + height, left : left + width])


def parse_size(text: str) -> tuple[int, int]:
    """``"256x192"`` -> (256, 192), width first; a one-line EdgeError on anything else."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise EdgeError(f"--size must be WxH such as 256x256, got {text!r}")
    return int(parts[0]), int(parts[1])


def fit_frame(bgr: np.ndarray, geometry: Geometry) -> np.ndarray:
    """H x W x 3 uint8 -> model_height x model_width x 3 uint8 according to ``geometry``."""
    g = geometry
    if g.fit == "pad":
        return cv2.copyMakeBorder(bgr, 0, g.model_height - g.height, 0, g.model_width - g.width, cv2.BORDER_REPLICATE)
    if g.fit == "crop":
        return bgr[g.top : g.top + g.model_height, g.left : g.left + g.model_width]
    return resize_to(bgr, g.model_width, g.model_height)


def to_model_input(frames_bgr: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """N frames of H x W x 3 uint8 BGR (same size) -> N x 3 x H x W float32 RGB in [-1, 1] (contiguous;
    ``formats.pixels.rgb_to_model``)."""
    return rgb_to_model(np.stack(frames_bgr)[..., ::-1])


def prepare(frame: np.ndarray, downsample: int, fit: str = "pad") -> tuple[np.ndarray, Geometry]:
    """One camera/file frame -> (1 x 3 x H' x W' float32 RGB in [-1, 1], the geometry to undo the fit)."""
    bgr = to_bgr_uint8(frame)
    geometry = Geometry.plan(bgr.shape[0], bgr.shape[1], downsample, fit)
    return to_model_input([fit_frame(bgr, geometry)]), geometry


def from_model_output(images: np.ndarray) -> np.ndarray:
    """N x 3 x H x W float RGB in [-1, 1] -> N x H x W x 3 uint8 BGR (rounded, clipped)."""
    return np.ascontiguousarray(model_to_levels(images).transpose(0, 2, 3, 1)[..., ::-1])


def restore(image_bgr: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A model_height x model_width x 3 uint8 reconstruction -> the frame's own height x width x 3."""
    g = geometry
    if g.fit == "pad":
        return np.ascontiguousarray(image_bgr[: g.height, : g.width])
    if g.fit == "crop":
        bottom, right = g.height - g.model_height - g.top, g.width - g.model_width - g.left
        return cv2.copyMakeBorder(image_bgr, g.top, bottom, g.left, right, cv2.BORDER_REPLICATE)
    return resize_to(image_bgr, g.width, g.height)
