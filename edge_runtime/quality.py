"""Reconstruction quality, numpy and OpenCV only: the one PSNR and SSIM of provq (``provq.train.metrics`` holds
their torch twins, tested equal on real photos).

``psnr`` takes two arrays of the same shape on a scale of peak-to-peak ``peak`` (uint8 frames: 255, the default;
model images in [-1, 1]: 2); ``ssim`` two H x W (x C) uint8 images (any channel order, the same in both):

    psnr   10 * log10(peak^2 / MSE) over every value, at most PSNR_CAP_DB (100 dB, what identical images give): the
           MSE is floored at peak^2 * 10^(-PSNR_CAP_DB / 10) (``psnr_from_mse``)
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
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_C1 = (SSIM_K1 * 255.0) ** 2
SSIM_C2 = (SSIM_K2 * 255.0) ** 2


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"expected two H x W (x C) images of the same shape, got {a.shape} and {b.shape}")


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """PSNR in dB of a mean squared error on a scale of peak-to-peak ``peak``; PSNR_CAP_DB at most."""
    floor = peak**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    return PSNR_CAP_DB if mse <= floor else 10.0 * math.log10(peak**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two arrays of the same shape (uint8 images: ``peak`` 255; [-1, 1] images: 2); see above."""
    if a.shape != b.shape:
        raise ValueError(f"expected two arrays of the same shape, got {a.shape} and {b.shape}")
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), peak)


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
