"""Pixel levels <-> the model's input range: the one preprocessing that training, calibration and the runtime share.

    uint8 level v (0..255)  ->  float32 v * float32(2 / 255) - 1, in [-1, 1] exactly (0 -> -1, 255 -> 1)
    uint16 level u          ->  uint8 (u * 255 + 32767) // 65535 (the nearest 8-bit level)
    float32 x in [-1, 1]    ->  uint8 rint((x + 1) * 127.5), clipped to 0..255 (the inverse on every level)

Both multiplications and the subtraction are rounded to float32, so a model sees the same numbers in training (from
torch through ``provq.train.data``) as on the device.
"""

from __future__ import annotations

import numpy as np

LEVEL_SCALE = np.float32(2.0 / 255.0)
LEVEL_OFFSET = np.float32(1.0)


def levels_to_model(levels: np.ndarray) -> np.ndarray:
    """uint8 levels of any shape -> float32 of the same shape in [-1, 1] (``v * float32(2/255) - 1``)."""
    if levels.dtype != np.uint8:
        raise ValueError(f"expected uint8 levels, got {levels.dtype}")
    return levels.astype(np.float32) * LEVEL_SCALE - LEVEL_OFFSET


def model_to_levels(values: np.ndarray) -> np.ndarray:
    """float values of any shape in [-1, 1] -> uint8 levels of the same shape (rounded to nearest, clipped)."""
    scaled = (np.asarray(values, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def uint16_to_uint8(frame: np.ndarray) -> np.ndarray:
    """uint16 levels of any shape -> the nearest uint8 levels (``(u * 255 + 32767) // 65535``)."""
    return ((frame.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def rgb_to_model(frames_rgb: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 RGB -> N x 3 x H x W float32 RGB in [-1, 1], contiguous."""
    return levels_to_model(np.ascontiguousarray(frames_rgb.transpose(0, 3, 1, 2)))
