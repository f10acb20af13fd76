"""``provq-bench`` on video inputs: H.264 at the token stream's size, and the tokenizer's rate-distortion points.

    points = tokenizer_points(manifest, clip, margins=(0.1,), threads=None)   # plain zlib, ctx, stable tokens
    entry = h264_baseline(clip.references, clip.fps, target_bytes_per_frame)  # one codec row, as bench's JPEG/WebP

Tokenizer points (ONNX Runtime FP32 encoder with its latents, FP32 decoder; PSNR and SSIM per frame at model size,
averaged, as the bench rows score):
    zlib        the version-1 coding (zlib over the previous-frame delta), the nearest-code ids
    ctx         the same ids context-coded (.ptok version 2): the same frames, fewer bytes
    stable M    ids with stable tokens at margin M (refreshed every FRAMES_PER_CHUNK frames), context-coded
Bytes per frame are chunk bytes of a real token stream (header excluded), 30 frames a chunk; ``write_ms`` and
``read_ms`` are the ms per frame that writing the stream (id coding included) and reading it back took.

H.264: libx264 through PyAV (``av``, in the base install; the row says so when it is missing), yuv420p, preset
medium, a keyframe every FRAMES_PER_CHUNK frames (as self-contained as a token chunk), average bit rate mode at target
bytes x 8 x fps; the rate is corrected (at most 4 encodes) until the mean packet bytes per frame are within 5% of the
target.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from .backends import OnnxRuntimeBackend
from .manifest import Manifest
from .preprocess import from_model_output
from .quality import psnr, ssim
from .sources import video_readers
from .stable import StableTokens, load_codebook

FRAMES_PER_CHUNK = 30  # as provq-run writes streams
H264_MISSING = "unavailable: the H.264 row needs PyAV: pip install av"
H264_TOLERANCE = 0.05
H264_TRIES = 4


def _x264(av: Any, frames: Sequence[np.ndarray], fps: float, bit_rate: int) -> tuple[list[bytes], float]:
    """Encode BGR frames; returns the packets and the encode time in ms per frame."""
    h, w = frames[0].shape[:2]
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuv420p"
    codec.time_base = Fraction(1, max(1, round(fps)))
    codec.framerate = Fraction(max(1, round(fps)), 1)
    codec.bit_rate = bit_rate
    codec.gop_size = FRAMES_PER_CHUNK
    codec.options = {"preset": "medium", "keyint_min": str(FRAMES_PER_CHUNK), "sc_threshold": "0"}
    packets: list[bytes] = []
    start = time.perf_counter()
    for i, bgr in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24").reformat(format="yuv420p")
        frame.pts = i
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets, (time.perf_counter() - start) * 1e3 / len(frames)


def _decode_h264(av: Any, packets: list[bytes]) -> tuple[list[np.ndarray], float]:
    codec = av.CodecContext.create("h264", "r")
    out: list[np.ndarray] = []
    start = time.perf_counter()
    for data in [*packets, None]:
        for frame in codec.decode(None if data is None else av.Packet(data)):
            out.append(frame.to_ndarray(format="bgr24"))
    return out, (time.perf_counter() - start) * 1e3 / max(1, len(out))


def h264_baseline(frames: Sequence[np.ndarray], fps: float, target: float) -> dict[str, Any]:
    """H.264 at ``target`` bytes per frame on ``frames`` (model-size BGR uint8): the bench's codec entry layout, with
    ``quality`` the bit rate in kbit/s."""
    entry: dict[str, Any] = {"codec": "h264", "status": "ok", "target_bytes_per_frame": target}
    av = video_readers.import_pyav()
    if av is None:
        entry["status"] = H264_MISSING
        return entry
    rate = fps if fps > 0 else 25.0
    bit_rate = max(1000, int(target * 8 * rate))
    for _ in range(H264_TRIES):
        packets, enc_ms = _x264(av, frames, rate, bit_rate)
        mean_bytes = sum(map(len, packets)) / len(frames)
        if abs(mean_bytes / target - 1) <= H264_TOLERANCE:
            break
        bit_rate = max(1000, int(bit_rate * target / mean_bytes))
    decoded, dec_ms = _decode_h264(av, packets)
    if len(decoded) != len(frames):
        entry["status"] = f"failed: {len(decoded)} frames decoded of {len(frames)}"
        return entry
    entry.update({
        "quality": round(bit_rate / 1000), "bytes_per_frame": mean_bytes, "bytes_ratio": mean_bytes / target,
        "quality_limited": False,
        "psnr_db": float(np.mean([psnr(d, f) for d, f in zip(decoded, frames, strict=True)])),
        "ssim": float(np.mean([ssim(d, f) for d, f in zip(decoded, frames, strict=True)])),
        "encode_ms": enc_ms, "decode_ms": dec_ms,
    })  # fmt: skip
    return entry


def _score(backend: OnnxRuntimeBackend, ids: np.ndarray, references: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean PSNR and SSIM of the decoded ``ids`` (N x h x w) against the references."""
    p, s = [], []
    for frame_ids, ref in zip(ids, references, strict=True):
        image = from_model_output(backend.decode(frame_ids[None].astype(np.int32)))[0]
        p.append(psnr(image, ref))
        s.append(ssim(image, ref))
    return float(np.mean(p)), float(np.mean(s))


def _changed(ids: np.ndarray) -> float:
    return float(np.mean([np.count_nonzero(ids[i] != ids[i - 1]) for i in range(1, len(ids))])) if len(ids) > 1 else 0.0


def tokenizer_points(
    manifest: Manifest, clip: Any, margins: Sequence[float], threads: int | None, stream_bytes: Any
) -> list[dict[str, Any]]:
    """The tokenizer's (bytes per frame, PSNR) points on ``clip`` (bench.Clip): zlib, ctx and one per margin.

    ``stream_bytes(ids, codec, times)`` gives the chunk bytes per frame of N x h x w ids written as a stream and
    puts the ms per frame of writing and reading it into ``times`` (``write_ms``, ``read_ms``)."""
    backend = OnnxRuntimeBackend(manifest, "fp32", threads=threads, latents=True)
    try:
        codebook = load_codebook(manifest)
        nearest, latents = [], []
        for call in range(clip.calls):
            ids, z = backend.encode_latents(clip.model_input(call))
            nearest += list(ids)
            latents += list(z)
        ids = np.stack(nearest).astype(np.int32)
        quality = _score(backend, ids, clip.references)
        settings = [("zlib", "zlib", None, ids, quality), ("ctx", "ctx", None, ids, quality)]
        for margin in margins:
            stable = StableTokens(codebook, margin)
            pairs = enumerate(zip(ids, latents, strict=True))
            held = np.stack([stable.step(i, z, t % FRAMES_PER_CHUNK == 0) for t, (i, z) in pairs])
            settings.append((f"stable {margin:g}", "ctx", margin, held, _score(backend, held, clip.references)))
        points = []
        for name, codec, margin, planes, (p, s) in settings:
            times: dict[str, float] = {}
            size = stream_bytes(planes, codec, times)
            points.append({"setting": name, "codec": codec, "margin": margin, "bytes_per_frame": size, "psnr_db": p,
                           "ssim": s, "changed_ids_per_frame": _changed(planes), **times})  # fmt: skip
        return points
    finally:
        backend.close()
