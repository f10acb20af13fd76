"""Reconstruction quality on uint8 frames, numpy and OpenCV only: PSNR and SSIM.

Both take two H x W x C uint8 images of the same shape (any channel order, the same in both) and score them on the
0..255 scale. They agree with ``provq.train.metrics`` (the torch versions used in training and the study) up to the
uint8 rounding of the inputs:

    psnr   10 * log10(255^2 / MSE) over all pixels and channels; identical images give PSNR_CAP_DB (100 dB)
    ssim   Wang et al. 2004: Gaussian 11 x 11 window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, population
           covariances; the SSIM map of each colour channel on its valid region (5 pixels lost on each side),
           averaged spatially, then over channels. The same as ``skimage.metrics.structural_similarity(a, b,
           channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

PSNR_CAP_DB = 100.0  # PSNR of identical images (instead of +inf)
SSIM_WINDOW = 11  # Gaussian window taps; images must be at least this tall and wide
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255.0) ** 2
SSIM_C2 = (0.03 * 255.0) ** 2


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"expected two H x W (x C) images of the same shape, got {a.shape} and {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images on the 0..255 scale; PSNR_CAP_DB when they are identical."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def _blur_valid(image: np.ndarray) -> np.ndarray:
    """H x W float64 -> (H - 10) x (W - 10): Gaussian-weighted local means, unpadded region only."""
    pad = SSIM_WINDOW // 2
    blurred = cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
    return blurred[pad:-pad, pad:-pad]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 images (H x W or H x W x C, H and W >= 11), averaged over channels; at most 1."""
    _check_pair(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {a.shape[:2]}")
    a3 = a.reshape(a.shape[0], a.shape[1], -1)
    b3 = b.reshape(b.shape[0], b.shape[1], -1)
    scores = []
    for c in range(a3.shape[2]):
        x, y = a3[..., c].astype(np.float64), b3[..., c].astype(np.float64)
        mu_x, mu_y = _blur_valid(x), _blur_valid(y)
        var_x = _blur_valid(x * x) - mu_x**2
        var_y = _blur_valid(y * y) - mu_y**2
        cov = _blur_valid(x * y) - mu_x * mu_y
        top = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
        bottom = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
        scores.append(float(np.mean(top / bottom)))
    return float(np.mean(scores))
