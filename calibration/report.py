"""What INT8 costs: token agreement and reconstruction PSNR of the INT8 graphs against FP32 on held-out frames.

All images are N x 3 x H x W float32 RGB in [-1, 1]; PSNR uses the [-1, 1] peak-to-peak range (2), averaged over
frames. Figures:
    token_agreement          share of INT8 encoder ids equal to the FP32 encoder's
    psnr_db                  INT8 round trip (INT8 encoder + INT8 decoder) against the input frames
    fp32_psnr_db             FP32 round trip against the input frames
    psnr_drop_db             fp32_psnr_db - psnr_db
    psnr_vs_fp32_db          INT8 round trip against the FP32 round trip
    decoder_psnr_vs_fp32_db  INT8 decoder on the FP32 ids against the FP32 decoder (the decoder's own error)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from provq.edge_runtime.backends import cpu_session
from provq.edge_runtime.formats.graph import IDS, IMAGES
from provq.edge_runtime.quality import psnr

Model = Path | onnx.ModelProto  # a file, or an in-memory graph such as export.fp16_graph.rounding_emulation's


def session(model: Model, *, exact: bool = False) -> Any:
    """A CPU ONNX Runtime session of a file or an in-memory graph (``backends.cpu_session``; ``exact``: see there)."""
    return cpu_session(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model, exact=exact)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [-1, 1] (peak-to-peak 2)."""
    return psnr(a, b, peak=2.0)


def compare(
    fp32: tuple[Model, Model],
    int8: tuple[Model, Model],
    frames: list[np.ndarray],
    names: tuple[str, str] = (IMAGES, IDS),
    *,
    exact: bool = False,
) -> dict[str, float]:
    """Run (encoder, decoder) pairs at both precisions on ``frames``; the figures listed in the module docstring.

    ``exact=True`` runs the ``int8`` pair as written (see ``session``): the figures of Q/DQ files for TensorRT.
    """
    enc32, dec32 = session(fp32[0]), session(fp32[1])
    enc8, dec8 = session(int8[0], exact=exact), session(int8[1], exact=exact)
    same = total = 0
    rows: dict[str, list[float]] = {"psnr_db": [], "fp32_psnr_db": [], "psnr_vs_fp32_db": [], "decoder": []}
    for x in frames:
        ids32 = enc32.run(None, {names[0]: x})[0]
        ids8 = enc8.run(None, {names[0]: x})[0]
        same += int((ids32 == ids8).sum())
        total += ids32.size
        rec32 = dec32.run(None, {names[1]: ids32})[0]
        rec8 = dec8.run(None, {names[1]: ids8})[0]
        rows["psnr_db"].append(_psnr(rec8, x))
        rows["fp32_psnr_db"].append(_psnr(rec32, x))
        rows["psnr_vs_fp32_db"].append(_psnr(rec8, rec32))
        rows["decoder"].append(_psnr(dec8.run(None, {names[1]: ids32})[0], rec32))
    out = {
        "frames": len(frames),
        "tokens": total,
        "token_agreement": same / max(total, 1),
        "psnr_db": float(np.mean(rows["psnr_db"])),
        "fp32_psnr_db": float(np.mean(rows["fp32_psnr_db"])),
        "psnr_vs_fp32_db": float(np.mean(rows["psnr_vs_fp32_db"])),
        "decoder_psnr_vs_fp32_db": float(np.mean(rows["decoder"])),
    }
    out["psnr_drop_db"] = out["fp32_psnr_db"] - out["psnr_db"]
    return out
