"""Codec baselines of provq-bench: JPEG and WebP (cv2.imencode) at the quality whose size matches the tokenizer's."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .errors import EdgeError
from .quality import psnr, ssim

CODECS = (("jpeg", ".jpg", cv2.IMWRITE_JPEG_QUALITY), ("webp", ".webp", cv2.IMWRITE_WEBP_QUALITY))


def _encoded_sizes(frames: Sequence[np.ndarray], ext: str, flag: int, quality: int) -> float:
    """Mean bytes per frame of ``frames`` encoded at ``quality``; EdgeError when this OpenCV cannot encode ``ext``."""
    total = 0
    for bgr in frames:
        try:
            ok, data = cv2.imencode(ext, bgr, [flag, quality])
        except cv2.error:
            ok = False
        if not ok:
            raise EdgeError(f"this OpenCV cannot encode {ext}")
        total += data.size
    return total / len(frames)


def match_quality(frames: Sequence[np.ndarray], ext: str, flag: int, target: float) -> int:
    """The quality in 1..100 whose mean bytes per frame is nearest ``target`` (binary search; size grows with it)."""
    lo, hi = 1, 100
    while lo < hi:  # smallest quality whose size reaches the target (100 when none does)
        mid = (lo + hi) // 2
        if _encoded_sizes(frames, ext, flag, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1:
        above, below = _encoded_sizes(frames, ext, flag, lo), _encoded_sizes(frames, ext, flag, lo - 1)
        if abs(below - target) < abs(above - target):
            return lo - 1
    return lo


def codec_baseline(frames: Sequence[np.ndarray], codec: str, ext: str, flag: int, target: float) -> dict[str, Any]:
    """One codec at the quality matching ``target`` bytes per frame: size, PSNR, SSIM, median encode/decode ms."""
    entry: dict[str, Any] = {"codec": codec, "status": "ok", "target_bytes_per_frame": target}
    try:
        quality = match_quality(frames, ext, flag, target)
    except EdgeError as err:
        entry["status"] = f"unavailable: {err}"
        return entry
    sizes, enc_ms, dec_ms, psnrs, ssims = [], [], [], [], []
    for bgr in frames:
        t0 = time.perf_counter()
        _, data = cv2.imencode(ext, bgr, [flag, quality])
        t1 = time.perf_counter()
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        t2 = time.perf_counter()
        sizes.append(data.size)
        enc_ms.append((t1 - t0) * 1e3)
        dec_ms.append((t2 - t1) * 1e3)
        psnrs.append(psnr(decoded, bgr))
        ssims.append(ssim(decoded, bgr))
    mean_bytes = float(np.mean(sizes))
    entry.update({
        "quality": quality, "bytes_per_frame": mean_bytes, "bytes_ratio": mean_bytes / target,
        "quality_limited": (quality == 1 and mean_bytes > target) or (quality == 100 and mean_bytes < target),
        "psnr_db": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
        "encode_ms": float(np.median(enc_ms)), "decode_ms": float(np.median(dec_ms)),
    })  # fmt: skip
    return entry


def codec_baselines(frames: Sequence[np.ndarray], target: float) -> list[dict[str, Any]]:
    """JPEG and WebP matched to ``target`` bytes per frame (the tokenizer's), on the same frames."""
    return [codec_baseline(frames, codec, ext, flag, target) for codec, ext, flag in CODECS]
