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
    tokens   agreement = share of ids equal to the model of record's ids of the same frames (the manifest's
             ``model_of_record``: ONNX Runtime FP32, or for a quantization-aware model its Q/DQ INT8 files run as
             written, which compute the fake-quantized network it was trained as); bytes per
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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, OnnxRuntimeBackend, cpu_session
from .bench_backends import SPLITS, Unavailable, open_row_backend
from .bench_codecs import codec_baselines
from .bench_env import environment, memory_mb
from .bench_video import h264_baseline, tokenizer_points
from .ctxcoder import near_count
from .errors import EdgeError
from .manifest import PRECISIONS, Manifest, load_manifest
from .preprocess import Geometry, cover_crop, fit_frame, from_model_output, to_bgr_uint8, to_model_input
from .quality import SSIM_WINDOW, psnr, ssim
from .sources import open_source
from .stable import DEFAULT_MARGIN, load_codebook
from .tokenstream import StreamHeader, TokenStreamWriter, stream_stats

try:
    import resource
except ImportError:  # not POSIX: no peak RSS
    resource = None

BACKENDS = ("onnxruntime", "tensorrt", "pytorch")
REFERENCE = ("onnxruntime", "fp32")  # whose ids the token agreement of every row is measured against
FIT = "pad"  # how frames are fitted to a multiple of the downsample factor (a no-op for sizes that are multiples)
FRAMES_PER_CHUNK = 30  # token stream chunking, as provq-run writes it
STAT_KEYS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "latency_ms_iqr", "latency_ms_mad", "fps")


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
        near=near_count(manifest.codebook_size) if codec == "ctx" else 0,
    )  # fmt: skip
    codebook = load_codebook(manifest) if header.near else None
    frame_ms = 1000.0 / clip.fps if clip.fps > 0 else 0.0
    with tempfile.TemporaryDirectory(prefix="provq-bench-") as folder:
        path = Path(folder) / "bench.ptok"
        t0 = time.perf_counter()
        writer = TokenStreamWriter(path, header, frames_per_chunk=FRAMES_PER_CHUNK, fsync=False, codebook=codebook)
        with writer:
            for i, frame_ids in enumerate(ids):
                writer.write(frame_ids, i * frame_ms)
        t1 = time.perf_counter()
        stats = stream_stats(path, expect_codebook_sha256=manifest.codebook_sha256, codebook=codebook)
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
    """The model of record's ids of every frame (untimed; module docstring), for runs that do not benchmark its row;
    None if it fails."""
    if manifest.model_of_record != "fp32":
        try:
            path = manifest.path(manifest.model_of_record, "encoder")
            manifest.verify(path)
            session = cpu_session(path, exact=True)
        except EdgeError:
            return None
        names = manifest.tensor_names("encoder")
        ids = [session.run([names[1]], {names[0]: clip.model_input(call)})[0] for call in range(clip.calls)]
        return np.concatenate(ids).astype(np.int32, copy=False)
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


def video_section(manifest: Manifest, clip: Clip, config: BenchConfig) -> dict[str, Any]:
    """{"points": the tokenizer's rate-distortion points, "h264": H.264 matched to each point's bytes per frame}."""

    def chunk_bytes(ids: np.ndarray, codec: str, times: dict) -> float:
        return stream_bytes(ids, manifest, clip, delta=True, codec=codec, times=times)[0]

    points = tokenizer_points(manifest, clip, config.stable_margins, config.threads, chunk_bytes)
    h264 = [h264_baseline(clip.references, clip.fps, p["bytes_per_frame"]) for p in points]
    return {"points": points, "h264": h264}


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
    record = REFERENCE if manifest.model_of_record == "fp32" else None  # the row whose ids score the others
    reference = None if record in names else reference_ids(manifest, clip, config.threads)
    for name in order:
        rows[name], ids = run_row(manifest, name, config, clip, reference)
        if name == record and ids is not None:
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
        "reference": "/".join(REFERENCE) if record else f"{manifest.model_of_record} Q/DQ files run as written",
        "rows": ordered,
        "codecs": codecs,
        "codec_target": None if target_row is None else f"{target_row['backend']}/{target_row['precision']}",
        "video": video,
        "peak_rss_mb": memory_mb()["peak_rss_mb"],
    }
