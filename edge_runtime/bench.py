"""``provq-bench`` measurements: latency, quality, token agreement and stream size per backend and precision.

    report = run_benchmark(BenchConfig(input="sample://", size=(256, 256), frames=30, warmup=5))
    report["rows"][0]["latency_ms_p50"], report["codecs"], report["environment"]

What one run does:
    frames   N frames of the input (``--size WxH``: scaled to cover W x H, then centre-cropped; no distortion), fitted
             to the model by padding to a multiple of the downsample factor, kept as uint8 and loaded before timing;
             each call's B x 3 x H x W input is made with ``preprocess.to_model_input`` (what ``prepare`` uses)
             just before the call (N is rounded down to a multiple of B).
    rows     one per backend x precision. A row that cannot run here says why in ``status``
             ("unavailable: tensorrt not installed"); a row that broke while running says "failed: ...".
             Precisions: fp32, fp16, int8, and fp16-int8: the encoder in FP16 and the decoder in INT8, the split
             that keeps FP32's token ids (docs/INT8.md).
    timing   ``time.perf_counter`` around each ``backend.encode`` and ``backend.decode`` call (model only: no
             decoding, preprocessing or conversion inside); W warm-up calls (encode + decode, not recorded) come
             first. Round trip = encode + decode of the same call. Latencies are per call (one batch), and their
             spread is the interquartile range and the median absolute deviation; fps = B * 1000 / median.
    quality  reconstructions (``from_model_output``: uint8, at model size) against the input frames at model size:
             PSNR and SSIM per frame (``quality.py``), averaged over frames.
    tokens   agreement = share of ids equal to the reference (ONNX Runtime FP32) ids of the same frames; bytes per
             frame of the real token stream (TokenStreamWriter, codec ctx, 30 frames a chunk), chunks only (the
             one-off header excluded), plain (every frame a keyframe) and previous-frame coded.
    codecs   JPEG and WebP (cv2.imencode) at the quality whose mean bytes per frame is nearest the tokenizer's
             previous-frame-coded bytes per frame of the reference row, on the same frames; ``quality_limited``
             when even quality 1 is larger (JPEG's ~600-byte headers dominate small frames) or 100 smaller. On
             video inputs also H.264 (x264 through PyAV, bench_video.py) at that size, its bit rate as quality.
    video    on video inputs (fps > 0, 2+ frames; ``video=False`` skips it): the tokenizer's rate-distortion
             points (zlib and ctx codings of the nearest-code ids, stable tokens at each ``stable_margins``
             margin) and H.264 matched to each point's bytes per frame (bench_video.py).
    memory   peak resident memory of the process (getrusage ru_maxrss) and its current RSS (/proc VmRSS) after
             each row, in MiB.

Row layout (JSON; every key present, None where not measured)::

    backend, precision, status, runs_on             "onnxruntime", "int8", "ok", "onnxruntime-cpu int8 (...)"
    latency_ms_p50, latency_ms_p95, latency_ms_p99  round trip, ms per call
    latency_ms_iqr, latency_ms_mad, fps             spread of the per-call times; frames per second at the median
    encoder, decoder, round_trip                    {latency_ms_p50/p95/p99/mean/min/max/iqr/mad, fps, calls,
                                                     speedup_vs_fp32}
    psnr_db, ssim, token_agreement                  dB (capped at 100), 0..1 (1 = identical), 0..1
    bytes_per_frame, bytes_per_frame_plain          previous-frame coded / plain; raw_bytes_per_frame: packed ids
    speedup_vs_fp32                                 FP32 round-trip median of the same backend / this row's
    rss_mb, peak_rss_mb                             after the row

The PyTorch row is the one place that touches torch: it imports torch and ``provq.train`` inside its own function,
and only runs the checkpoint the model was exported from (manifest ``source``), FP32 only.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import preprocess
from .backends import Backend, OnnxRuntimeBackend, TensorRTBackend
from .bench_video import h264_baseline, tokenizer_points
from .engine_meta import TRT_MISSING, import_tensorrt
from .errors import EdgeError, ProvqError
from .formats.versions import package_version
from .manifest import PRECISIONS, Manifest, load_manifest, sha256_file
from .preprocess import Geometry, cover_crop, fit_frame, from_model_output, to_bgr_uint8, to_model_input
from .quality import SSIM_WINDOW, psnr, ssim
from .sources import open_source
from .stable import DEFAULT_MARGIN
from .tokenstream import StreamHeader, TokenStreamWriter, stream_stats

try:
    import resource
except ImportError:  # not POSIX: no peak RSS
    resource = None

BACKENDS = ("onnxruntime", "tensorrt", "pytorch")
REFERENCE = ("onnxruntime", "fp32")  # whose ids the token agreement of every row is measured against
FIT = "pad"  # how frames are fitted to a multiple of the downsample factor (a no-op for sizes that are multiples)
FRAMES_PER_CHUNK = 30  # token stream chunking, as provq-run writes it
CODECS = (("jpeg", ".jpg", cv2.IMWRITE_JPEG_QUALITY), ("webp", ".webp", cv2.IMWRITE_WEBP_QUALITY))
STAT_KEYS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "latency_ms_iqr", "latency_ms_mad", "fps")

# --floor metrics and their direction: True = higher is better (the value is a floor), False = lower is better
# (the value is a ceiling: latency, bytes, memory).
FLOOR_METRICS = {
    "fps": True, "psnr_db": True, "ssim": True, "token_agreement": True, "speedup_vs_fp32": True,
    "latency_ms_p50": False, "latency_ms_p95": False, "latency_ms_p99": False,
    "bytes_per_frame": False, "bytes_per_frame_plain": False, "peak_rss_mb": False,
}  # fmt: skip


# Row precisions beyond the manifest's: "ENCODER-DECODER" splits, e.g. fp16-int8 (FP16 encoder, INT8 decoder).
SPLITS = {"fp16-int8": ("fp16", "int8")}
ROW_PRECISIONS = (*PRECISIONS, *SPLITS)


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark; ``check()`` raises a one-line EdgeError for values out of range."""

    model: str = "default"  # MODEL_DIR written by provq-export, or the shipped model
    input: str = "sample://"  # any runtime input URI; a finite one (file, folder) gives repeatable figures
    backends: tuple[str, ...] = BACKENDS  # subset of BACKENDS, in table order
    precisions: tuple[str, ...] = ROW_PRECISIONS  # subset of ROW_PRECISIONS, in table order
    frames: int = 50  # timed frames (rounded down to a multiple of batch)
    warmup: int = 5  # untimed encode + decode calls before timing
    size: tuple[int, int] | None = None  # (width, height): cover + centre-crop every frame to it; None: as decoded
    threads: int | None = None  # intra-op threads of ONNX Runtime and torch; None: their defaults
    batch: int = 1  # frames per encode/decode call
    video: bool = True  # on video inputs (fps > 0, 2+ frames): the H.264 row and the rate-distortion points
    stable_margins: tuple[float, ...] = (DEFAULT_MARGIN,)  # stable-token margins of the rate-distortion points

    def check(self) -> None:
        if not self.backends or not self.precisions:
            raise EdgeError("name at least one backend and one precision")
        for name, value, low in (("frames", self.frames, 1), ("warmup", self.warmup, 0), ("batch", self.batch, 1)):
            if not isinstance(value, int) or value < low:
                raise EdgeError(f"--{name} must be an integer >= {low}, got {value!r}")
        if self.frames < self.batch:
            raise EdgeError(f"--frames {self.frames} is less than one batch (--batch {self.batch})")
        if self.threads is not None and self.threads < 1:
            raise EdgeError(f"--threads must be >= 1, got {self.threads}")
        if any(not (np.isfinite(m) and m >= 0) for m in self.stable_margins):
            raise EdgeError(f"--stable-margins must be numbers >= 0, got {list(self.stable_margins)}")
        if self.size is not None and min(self.size) < SSIM_WINDOW:
            raise EdgeError(f"--size {self.size[0]}x{self.size[1]} is too small: at least {SSIM_WINDOW} pixels a side")


class Unavailable(Exception):
    """A row that cannot run on this machine; the message says why in a few words."""


# -- user input ----------------------------------------------------------------------------------------------------


def parse_names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"onnxruntime,tensorrt"`` -> ("onnxruntime", "tensorrt"); EdgeError naming an unknown entry (with a guess)."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if not names:
        raise EdgeError(f"no {what} given: use a comma-separated list of {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            guess = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            raise EdgeError(f"unknown {what} {name!r}: use {', '.join(allowed)}{hint}")
    return tuple(dict.fromkeys(names))


def parse_size(text: str) -> tuple[int, int]:
    """``"256x192"`` -> (256, 192), width first, at least the SSIM window a side; EdgeError on anything else."""
    width, height = preprocess.parse_size(text)
    if min(width, height) < SSIM_WINDOW:
        raise EdgeError(f"--size {text} is too small: at least {SSIM_WINDOW} pixels a side")
    return width, height


@dataclass(frozen=True)
class Floor:
    """``--floor [backend/precision:]metric=value``: a figure every row that ran (or the named row) must reach."""

    metric: str
    value: float
    backend: str | None = None  # None: every row that ran
    precision: str | None = None

    @property
    def text(self) -> str:
        scope = f"{self.backend}/{self.precision}:" if self.backend else ""
        return f"{scope}{self.metric}={self.value:g}"


def parse_floor(text: str) -> Floor:
    """``"fps=30"`` or ``"onnxruntime/int8:fps=30"`` -> Floor; EdgeError for a bad form or an unknown metric."""
    scope, _, claim = text.rpartition(":")
    metric, sep, value = claim.partition("=")
    metric = metric.strip()
    if not sep or not metric:
        raise EdgeError(f"--floor {text!r}: expected metric=value such as fps=30 or onnxruntime/int8:fps=30")
    if metric not in FLOOR_METRICS:
        guess = difflib.get_close_matches(metric, FLOOR_METRICS, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise EdgeError(f"--floor {text!r}: unknown metric {metric!r}: use {', '.join(FLOOR_METRICS)}{hint}")
    try:
        number = float(value)
    except ValueError:
        raise EdgeError(f"--floor {text!r}: {value!r} is not a number") from None
    if not np.isfinite(number):
        raise EdgeError(f"--floor {text!r}: the value must be finite")
    if not scope:
        return Floor(metric, number)
    backend, slash, precision = scope.partition("/")
    if not slash or backend not in BACKENDS or precision not in ROW_PRECISIONS:
        raise EdgeError(
            f"--floor {text!r}: the row must be BACKEND/PRECISION with a backend of {', '.join(BACKENDS)} and a "
            f"precision of {', '.join(ROW_PRECISIONS)}"
        )
    return Floor(metric, number, backend, precision)


def check_floors(report: dict[str, Any], floors: Sequence[Floor]) -> list[str]:
    """One line per floor missed, e.g. ``onnxruntime/int8 fps 24.1 is below the floor 30``; empty when all pass.

    An unscoped floor applies to the rows that ran; a scoped floor also fails when its row did not run.
    """
    failures = []
    for floor in floors:
        for row in report["rows"]:
            name = f"{row['backend']}/{row['precision']}"
            if floor.backend is not None and (row["backend"], row["precision"]) != (floor.backend, floor.precision):
                continue
            if row["status"] != "ok":
                if floor.backend is not None:
                    failures.append(f"{name} {floor.metric}: the row did not run ({row['status']})")
                continue
            value = row[floor.metric]
            higher_is_better = FLOOR_METRICS[floor.metric]
            if value is None:
                failures.append(f"{name} {floor.metric} was not measured (floor {floor.value:g})")
            elif higher_is_better and value < floor.value:
                failures.append(f"{name} {floor.metric} {value:.4g} is below the floor {floor.value:g}")
            elif not higher_is_better and value > floor.value:
                failures.append(f"{name} {floor.metric} {value:.4g} is above the ceiling {floor.value:g}")
    return failures


# -- frames --------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """The benchmark's frames, loaded before any timing; model inputs are made per call, outside the timed region."""

    references: list[np.ndarray]  # N x (H x W x 3 uint8 BGR) at model size: the input, and what is scored against
    batch: int  # frames per call; N is a multiple of it
    geometry: Geometry  # frame size -> model size (fit "pad")
    fps: float  # the source's nominal rate (token stream timestamps)

    @property
    def calls(self) -> int:
        return len(self.references) // self.batch

    def model_input(self, call: int) -> np.ndarray:
        """Batch ``call``: B x 3 x H x W float32 RGB in [-1, 1], exactly what ``preprocess.prepare`` gives."""
        return to_model_input(self.references[call * self.batch : (call + 1) * self.batch])


def load_clip(uri: str, frames: int, batch: int, size: tuple[int, int] | None, downsample: int) -> Clip:
    """Read up to ``frames`` frames of ``uri``, fitted to the model; EdgeError when there are none or sizes differ."""
    images: list[np.ndarray] = []
    with open_source(uri) as source:
        fps = source.fps
        for frame in source:
            bgr = to_bgr_uint8(frame.image)
            images.append(cover_crop(bgr, *size) if size else bgr)
            if len(images) == frames:
                break
    if not images:
        raise EdgeError(f"input {uri} gave no frames: check the file, folder or camera")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise EdgeError(f"frames of {uri} differ in size ({len(shapes)} sizes): pass --size WxH to bring them to one")
    used = len(images) // batch * batch
    if used == 0:
        raise EdgeError(f"input {uri} gave {len(images)} frames, fewer than one batch (--batch {batch})")
    geometry = Geometry.plan(images[0].shape[0], images[0].shape[1], downsample, FIT)
    if min(geometry.model_height, geometry.model_width) < SSIM_WINDOW:
        raise EdgeError(f"frames of {uri} are too small to score: at least {SSIM_WINDOW} pixels a side")
    references = [np.ascontiguousarray(fit_frame(bgr, geometry)) for bgr in images[:used]]
    return Clip(references, batch, geometry, fps)


# -- one row -------------------------------------------------------------------------------------------------------


class _TorchBackend:
    """The checkpoint a model was exported from, in PyTorch eager mode (FP32; CUDA when available, else CPU)."""

    def __init__(self, model: Any, torch: Any, checkpoint: Path) -> None:
        self.name = "pytorch"
        self.precision = "fp32"
        self._torch = torch
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model = model.to(self._device)
        self._checkpoint = checkpoint

    def encode(self, images: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 RGB in [-1, 1] -> N x h x w int32."""
        with self._torch.inference_mode():
            ids = self._model.encode(self._torch.from_numpy(images).to(self._device))
        return ids.cpu().numpy().astype(np.int32, copy=False)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """N x h x w int32 -> N x 3 x H x W float32 in [-1, 1]."""
        with self._torch.inference_mode():
            images = self._model.decode(self._torch.from_numpy(ids).to(self._device))
        return images.float().cpu().numpy()

    def describe(self) -> str:
        return f"pytorch {self._torch.__version__} fp32 on {self._device} ({self._checkpoint.name})"

    def close(self) -> None:
        self._model = None


def _open_pytorch(manifest: Manifest, precision: str, threads: int | None) -> _TorchBackend:
    """The checkpoint named in the manifest's ``source``; Unavailable without torch or without that checkpoint."""
    if precision != "fp32":
        raise Unavailable("the pytorch row runs fp32 only")
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    try:
        from provq.train import checkpoint as ckpt
    except ImportError as err:
        raise Unavailable(f"provq.train does not import ({err})") from None
    source = manifest.data.get("source") or {}
    name = source.get("checkpoint")
    if not isinstance(name, str) or not name:
        raise Unavailable("the manifest does not name the checkpoint it was exported from")
    candidates = [manifest.directory / Path(name).name]
    if name == ckpt.DEFAULT_NAME:
        candidates.append(ckpt.default_checkpoint())
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise Unavailable(f"checkpoint {name} not found (put it in {manifest.directory})")
    expected = source.get("checkpoint_sha256")
    if expected and sha256_file(found) != expected:
        raise Unavailable(f"{found} is not the checkpoint this model was exported from (sha256 differs)")
    if threads:
        torch.set_num_threads(threads)
    try:
        model = ckpt.load_tokenizer(found)
    except ProvqError as err:
        raise Unavailable(str(err)) from None
    return _TorchBackend(model, torch, found)


def open_row_backend(manifest: Manifest, backend: str, precision: str, threads: int | None) -> Backend:
    """The backend of one row (``precision`` from ROW_PRECISIONS), or Unavailable saying why it cannot run here."""
    encoder, decoder = SPLITS.get(precision, (precision, precision))
    if backend == "pytorch":
        return _open_pytorch(manifest, precision, threads)
    if backend == "tensorrt":
        try:
            import_tensorrt()
        except EdgeError as err:
            raise Unavailable("tensorrt not installed" if str(err).startswith(TRT_MISSING) else str(err)) from None
        try:
            return TensorRTBackend(manifest, decoder, encoder_precision=encoder)
        except EdgeError as err:
            raise Unavailable(str(err)) from None
    for part in dict.fromkeys((encoder, decoder)):
        if part not in manifest.precisions:
            fix = "export the model again" if part == "fp16" else "run provq-calibrate"
            raise Unavailable(f"no {part} files ({fix})")
    return OnnxRuntimeBackend(manifest, decoder, encoder_precision=encoder, threads=threads)


def latency_stats(times_ms: Sequence[float], batch: int) -> dict[str, Any]:
    """Per-call times -> percentiles, spread (interquartile range, median absolute deviation) and fps at the median."""
    t = np.asarray(times_ms, dtype=np.float64)
    q25, p50, q75, p95, p99 = np.percentile(t, [25, 50, 75, 95, 99])
    return {
        "latency_ms_p50": float(p50), "latency_ms_p95": float(p95), "latency_ms_p99": float(p99),
        "latency_ms_mean": float(t.mean()), "latency_ms_min": float(t.min()), "latency_ms_max": float(t.max()),
        "latency_ms_iqr": float(q75 - q25), "latency_ms_mad": float(np.median(np.abs(t - p50))),
        "fps": batch * 1000.0 / float(p50) if p50 > 0 else None, "calls": int(t.size), "speedup_vs_fp32": None,
    }  # fmt: skip


def time_calls(backend: Backend, clip: Clip, warmup: int) -> tuple[dict[str, list[float]], np.ndarray, np.ndarray]:
    """Warm up, then encode + decode every batch of ``clip`` once.

    Returns (per-call ms by stage, N x h x w int32 ids, N x H x W x 3 uint8 BGR reconstructions). Inputs are made
    and outputs converted to uint8 between calls, outside the timed region.
    """
    for i in range(warmup):
        backend.decode(backend.encode(clip.model_input(i % clip.calls)))
    times: dict[str, list[float]] = {"encoder": [], "decoder": [], "round_trip": []}
    ids_out, images_out = [], []
    for call in range(clip.calls):
        x = clip.model_input(call)
        t0 = time.perf_counter()
        ids = backend.encode(x)
        t1 = time.perf_counter()
        images = backend.decode(ids)
        t2 = time.perf_counter()
        times["encoder"].append((t1 - t0) * 1e3)
        times["decoder"].append((t2 - t1) * 1e3)
        times["round_trip"].append((t2 - t0) * 1e3)
        ids_out.append(ids.astype(np.int32, copy=False))
        images_out.append(from_model_output(images))
    return times, np.concatenate(ids_out), np.concatenate(images_out)


def stream_bytes(
    ids: np.ndarray, manifest: Manifest, clip: Clip, *, delta: bool, codec: str = "ctx", times: dict | None = None
) -> tuple[float, float]:
    """N x h x w ids written as a real token stream -> (chunk bytes per frame, raw packed bytes per frame).

    ``times``, when given, receives the ms per frame of writing (``write_ms``: coding included) and of reading the
    whole stream back (``read_ms``: decoding and checking)."""
    header = StreamHeader(
        codebook_sha256=manifest.codebook_sha256, codebook_size=manifest.codebook_size, grid_height=ids.shape[1],
        grid_width=ids.shape[2], fps=clip.fps, delta=delta, codec=codec, **dataclasses.asdict(clip.geometry),
    )  # fmt: skip
    frame_ms = 1000.0 / clip.fps if clip.fps > 0 else 0.0
    with tempfile.TemporaryDirectory(prefix="provq-bench-") as folder:
        path = Path(folder) / "bench.ptok"
        t0 = time.perf_counter()
        with TokenStreamWriter(path, header, frames_per_chunk=FRAMES_PER_CHUNK, fsync=False) as writer:
            for i, frame_ids in enumerate(ids):
                writer.write(frame_ids, i * frame_ms)
        t1 = time.perf_counter()
        stats = stream_stats(path, expect_codebook_sha256=manifest.codebook_sha256)
        if times is not None:
            times["write_ms"] = (t1 - t0) * 1e3 / len(ids)
            times["read_ms"] = (time.perf_counter() - t1) * 1e3 / len(ids)
    return (stats.total_bytes - stats.header_bytes) / stats.frames, stats.raw_bits_per_frame / 8


def empty_row(backend: str, precision: str, status: str) -> dict[str, Any]:
    """A row with every figure None (what an unavailable or failed row reports)."""
    row: dict[str, Any] = {"backend": backend, "precision": precision, "status": status, "runs_on": None}
    row.update(dict.fromkeys(STAT_KEYS))
    row.update({"encoder": None, "decoder": None, "round_trip": None, "psnr_db": None, "ssim": None,
                "token_agreement": None, "bytes_per_frame": None, "bytes_per_frame_plain": None,
                "raw_bytes_per_frame": None, "speedup_vs_fp32": None})  # fmt: skip
    row.update(memory_mb())
    return row


def measure_row(
    backend: Backend, manifest: Manifest, clip: Clip, warmup: int, reference: np.ndarray | None
) -> tuple[dict[str, Any], np.ndarray]:
    """Time and score one backend: (row figures, N x h x w ids)."""
    times, ids, recon = time_calls(backend, clip, warmup)
    row = {stage: latency_stats(ms, clip.batch) for stage, ms in times.items()}
    row.update({key: row["round_trip"][key] for key in STAT_KEYS})
    row["psnr_db"] = float(np.mean([psnr(r, x) for r, x in zip(recon, clip.references, strict=True)]))
    row["ssim"] = float(np.mean([ssim(r, x) for r, x in zip(recon, clip.references, strict=True)]))
    row["token_agreement"] = None if reference is None else float(np.mean(ids == reference))
    row["bytes_per_frame"], row["raw_bytes_per_frame"] = stream_bytes(ids, manifest, clip, delta=True)
    row["bytes_per_frame_plain"], _ = stream_bytes(ids, manifest, clip, delta=False)
    return row, ids


def run_row(
    manifest: Manifest, name: tuple[str, str], config: BenchConfig, clip: Clip, reference: np.ndarray | None
) -> tuple[dict[str, Any], np.ndarray | None]:
    """One backend x precision row and its ids (None when it did not run)."""
    backend_name, precision = name
    try:
        backend = open_row_backend(manifest, backend_name, precision, config.threads)
    except Unavailable as why:
        return empty_row(backend_name, precision, f"unavailable: {why}"), None
    except EdgeError as err:
        return empty_row(backend_name, precision, f"failed: {err}"), None
    try:
        figures, ids = measure_row(backend, manifest, clip, config.warmup, reference)
        described = backend.describe()
    except EdgeError as err:
        return empty_row(backend_name, precision, f"failed: {err}"), None
    finally:
        backend.close()
    row = empty_row(backend_name, precision, "ok")
    row.update(figures, runs_on=described)
    row.update(memory_mb())
    return row, ids


def reference_ids(manifest: Manifest, clip: Clip, threads: int | None) -> np.ndarray | None:
    """ONNX Runtime FP32 ids of every frame (untimed), for runs that do not benchmark that row; None if it fails."""
    try:
        backend = OnnxRuntimeBackend(manifest, "fp32", threads=threads)
    except EdgeError:
        return None
    try:
        ids = [backend.encode(clip.model_input(call)) for call in range(clip.calls)]
        return np.concatenate(ids).astype(np.int32, copy=False)
    finally:
        backend.close()


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Set ``speedup_vs_fp32`` (FP32 median / this row's median, same backend) on every row that ran."""
    fp32 = {r["backend"]: r for r in rows if r["precision"] == "fp32" and r["status"] == "ok"}
    for row in rows:
        base = fp32.get(row["backend"])
        if row["status"] != "ok" or base is None:
            continue
        for stage in ("encoder", "decoder", "round_trip"):
            mine, theirs = row[stage]["latency_ms_p50"], base[stage]["latency_ms_p50"]
            row[stage]["speedup_vs_fp32"] = theirs / mine if mine > 0 else None
        row["speedup_vs_fp32"] = row["round_trip"]["speedup_vs_fp32"]


# -- codec baselines -----------------------------------------------------------------------------------------------


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


def video_section(manifest: Manifest, clip: Clip, config: BenchConfig) -> dict[str, Any]:
    """{"points": the tokenizer's rate-distortion points, "h264": H.264 matched to each point's bytes per frame}."""

    def chunk_bytes(ids: np.ndarray, codec: str, times: dict) -> float:
        return stream_bytes(ids, manifest, clip, delta=True, codec=codec, times=times)[0]

    points = tokenizer_points(manifest, clip, config.stable_margins, config.threads, chunk_bytes)
    h264 = [h264_baseline(clip.references, clip.fps, p["bytes_per_frame"]) for p in points]
    return {"points": points, "h264": h264}


# -- environment ---------------------------------------------------------------------------------------------------


def memory_mb() -> dict[str, float | None]:
    """{"rss_mb": current resident memory, "peak_rss_mb": the process's peak so far} in MiB (None where unknown)."""
    peak = None
    if resource is not None:
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
    current = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"rss_mb": current, "peak_rss_mb": peak}


def _cpu_model() -> str:
    """'AMD EPYC 9R14' from /proc/cpuinfo (model name, or on ARM the Hardware/Model line), else platform's guess."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpus() -> list[str] | None:
    """``nvidia-smi`` names and memory of the GPUs, or None without nvidia-smi (Jetsons have none)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return lines if done.returncode == 0 and lines else None


def _jetson_model() -> str | None:
    """/proc/device-tree/model on a Jetson (e.g. 'NVIDIA Jetson Orin Nano Developer Kit'), else None."""
    try:
        return Path("/proc/device-tree/model").read_bytes().rstrip(b"\x00").decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def environment(threads: int | None) -> dict[str, Any]:
    """Where the figures were measured: CPU, cores, threads, GPU, Jetson model, versions and the date (UTC)."""
    import onnxruntime

    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "cores": os.cpu_count(),
        "threads": threads,  # None: each backend's default (ONNX Runtime: one per physical core)
        "gpu": _gpus(),
        "jetson": _jetson_model(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "versions": {
            "provq": package_version("provq"),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tensorrt": package_version("tensorrt"),
            "torch": package_version("torch") if "torch" in sys.modules and sys.modules["torch"] is not None else None,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- the whole run -------------------------------------------------------------------------------------------------


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every row of ``config``: {"config", "environment", "rows", "codecs", "reference", "peak_rss_mb"}."""
    say = progress or (lambda _message: None)
    config.check()
    manifest = load_manifest(config.model)
    clip = load_clip(config.input, config.frames, config.batch, config.size, manifest.downsample)
    say(f"{len(clip.references)} frames at {clip.geometry.model_width}x{clip.geometry.model_height}, "
        f"{clip.calls} calls of {config.batch}, {config.warmup} warm-up")  # fmt: skip
    names = [(b, p) for b in config.backends for p in config.precisions]
    order = sorted(names, key=lambda name: name != REFERENCE)  # the reference row first: its ids score the others
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    reference = None if REFERENCE in names else reference_ids(manifest, clip, config.threads)
    for name in order:
        rows[name], ids = run_row(manifest, name, config, clip, reference)
        if name == REFERENCE and ids is not None:
            reference = ids
            rows[name]["token_agreement"] = 1.0  # the reference agrees with itself
        rt = rows[name]["latency_ms_p50"]
        say(f"{name[0]}/{name[1]}: {rows[name]['status']}" + ("" if rt is None else f" (round trip {rt:.1f} ms)"))
    ordered = [rows[name] for name in names]
    add_speedups(ordered)
    ran = [r for r in ordered if r["status"] == "ok"]
    target_row = rows.get(REFERENCE) if rows.get(REFERENCE, {}).get("status") == "ok" else (ran[0] if ran else None)
    codecs: list[dict[str, Any]] = []
    video = None
    if target_row is not None:
        say("codec baselines ...")
        codecs = codec_baselines(clip.references, target_row["bytes_per_frame"])
        if config.video and clip.fps > 0 and len(clip.references) > 1:
            say("H.264 and the rate-distortion points ...")
            codecs.append(h264_baseline(clip.references, clip.fps, target_row["bytes_per_frame"]))
            video = video_section(manifest, clip, config)
    g = clip.geometry
    setup = {
        "model": str(manifest.directory), "input": config.input, "backends": list(config.backends),
        "precisions": list(config.precisions), "frames_requested": config.frames, "frames": len(clip.references),
        "warmup": config.warmup, "batch": config.batch, "size": None if config.size is None else list(config.size),
        "frame_size": [g.width, g.height], "model_size": [g.model_width, g.model_height], "fit": FIT,
        "grid": [g.model_width // manifest.downsample, g.model_height // manifest.downsample],
        "codebook_size": manifest.codebook_size, "threads": config.threads,
    }  # fmt: skip
    return {
        "format": "provq-bench",
        "version": 1,
        "config": setup,
        "environment": environment(config.threads),
        "reference": "/".join(REFERENCE),
        "rows": ordered,
        "codecs": codecs,
        "codec_target": None if target_row is None else f"{target_row['backend']}/{target_row['precision']}",
        "video": video,
        "peak_rss_mb": memory_mb()["peak_rss_mb"],
    }
