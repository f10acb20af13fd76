"""One stream's side of a run: its frames prepared, its token stream and output written, its figures kept.

Both schedulers use it: ``Pipeline`` (one source, pipeline.py) and ``CameraPipeline`` (several sources batched
through one model, cameras.py). Per frame:

    StreamState.prepare     Frame.image H x W x 3 uint8 BGR -> Work (1 x 3 x H' x W' float32 RGB [-1, 1] + Geometry)
    (the scheduler)         Work.ids 1 x h x w int32 in [0, K); Work.decoded 1 x 3 x H' x W' float32 when reconstructing
    StreamState.stabilize   stable tokens (opt-in): the same ids with near-boundary cells held
    StreamState.write_frame the ids into the .ptok; the reconstruction (H x W x 3 uint8 BGR) to the output and PSNR

Stage times and the latency (the source handing a frame over -> its tokens and reconstruction written) are kept for
the most recent ``WINDOW`` frames and summarized as p50 / p95 / mean in the ``RunReport``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from .ctxcoder import near_count
from .errors import EdgeError
from .outputs import Output
from .preprocess import Geometry, from_model_output, prepare, restore, to_bgr_uint8
from .quality import psnr_from_mse
from .source_uri import redact
from .sources import Frame, FrameSource
from .stable import StableTokens, load_codebook
from .token_sink import TokenSink
from .tokenstream import StreamHeader, raw_bits_per_frame

STAGES = ("capture", "preprocess", "encode", "decode", "postprocess", "tokens", "write")
WINDOW = 1 << 14  # frames kept for the percentiles


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does with each frame; the defaults are provq-run's."""

    fit: str = "pad"  # how frames are fitted to a multiple of the downsample factor: pad | crop | resize
    max_frames: int | None = None  # stop after this many frames (per stream); None: until the source ends or stop()
    tokens: Path | None = None  # the .ptok to write (must not exist); None: bytes are counted in a scratch stream
    codec: str = "ctx"  # token stream coding: ctx (context-coded ids) | zlib | zstd | none
    delta: bool = True  # code frames against the previous one (lossless)
    keyframe_interval: int = 0  # also a keyframe every N frames; 0: only at chunk starts
    frames_per_chunk: int = 30  # frames per .ptok chunk: what a crash can lose at most
    queue_size: int = 2  # frames between stages for file sources (live sources use 1)
    stable_margin: float | None = None  # stable tokens (edge_runtime/stable.py) with this margin; None: off


@dataclass
class RunReport:
    """What a run did and how fast; ``to_json`` gives provq-run's --json fields."""

    frames: int  # frames written
    dropped: int  # frames a live source overwrote before the pipeline took them
    gaps: list[tuple[float, float]]  # live source outages (from_ms, to_ms)
    elapsed_s: float  # from the first frame handed over to the last one written
    fps: float  # frames / elapsed_s
    latency_ms: dict[str, float]  # end-to-end per frame: p50, p95
    stage_ms: dict[str, dict[str, float]]  # per stage: p50, p95 (decode and postprocess only when reconstructing)
    bytes_per_frame: float  # token stream bytes (header included) per frame
    changed_ids_per_frame: float | None  # ids that differ from the previous frame's, mean over frames after the first
    stable_tokens: float | None  # the stable-token margin, None when off
    raw_bits_per_frame: int  # h * w * ceil(log2 K)
    psnr_db: float | None  # 10 log10(255^2 / MSE), the MSE over every pixel of every reconstruction against its
    # input frame at the frame's own size; None without an output
    size: tuple[int, int] | None  # frame width, height
    model_size: tuple[int, int] | None  # what the model saw: width, height
    grid: tuple[int, int] | None  # token grid h, w
    stopped: bool  # ended by stop() rather than the end of the source or max_frames

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latency_ms"]
        data["latency_ms_p50"] = self.latency_ms.get("p50")
        data["latency_ms_p95"] = self.latency_ms.get("p95")
        data["gaps"] = [list(g) for g in self.gaps]
        for key in ("size", "model_size", "grid"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data


def needs_codebook(config: PipelineConfig) -> bool:
    """Whether a stream needs the model's codebook: version 3 ids (codec ctx) are coded against it, stable tokens
    compare latents with it."""
    return config.codec == "ctx" or config.stable_margin is not None


def run_threads(
    threads: list[threading.Thread], wait: Callable[[], None], fail: Callable[[BaseException], None]
) -> None:
    """Start a pipeline's threads and run ``wait`` (the main thread's loop) until they end. An exception out of
    ``wait`` (a second Ctrl-C) fails the run with EdgeError("interrupted"), gives each thread 5 s to finish what
    was flushed, and is raised again."""
    for thread in threads:
        thread.start()
    try:
        wait()
    except BaseException:
        fail(EdgeError("interrupted"))
        for thread in threads:
            thread.join(5.0)
        raise


class TimeWindow:
    """The most recent WINDOW samples of one timing, in ms."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)

    def add(self, ms: float) -> None:
        self.samples.append(ms)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        samples = np.fromiter(self.samples, float)
        p50, p95 = np.percentile(samples, [50, 95])
        return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "mean": round(float(samples.mean()), 3)}


@dataclass
class Work:
    """One frame travelling through the queues."""

    timestamp_ms: float
    handed_s: float  # perf_counter when the source handed the frame over
    images: np.ndarray  # 1 x 3 x H' x W' float32 RGB [-1, 1]
    geometry: Geometry
    reference: np.ndarray | None  # H x W x 3 uint8 BGR input frame, kept only when reconstructing
    ms: dict[str, float]  # stage -> milliseconds
    ids: np.ndarray | None = None  # 1 x h x w int32
    decoded: np.ndarray | None = None  # 1 x 3 x H' x W' float32


class Gap(NamedTuple):
    """A live source's outage, passed down the queues between the frames around it."""

    from_ms: float
    to_ms: float


class StreamState:
    """The per-stream half of a run: preparing frames, stable tokens, the token sink, the output and the figures.

    ``prepare`` runs in the stream's capture thread, ``stabilize`` in the inference thread, ``write_frame``,
    ``write_gap`` and ``close`` in the writer thread; ``progress_figures`` and ``report`` may be read from any.
    """

    def __init__(
        self,
        source: FrameSource,
        backend: Any,
        config: PipelineConfig,
        output: Output | None = None,
        codebook: np.ndarray | None = None,
    ) -> None:
        """``codebook`` (K x D float32, see ``needs_codebook``) is loaded from the model when not given."""
        self.source = source
        self.backend = backend
        self.config = config
        self.output = output
        self.reconstruct = output is not None
        if codebook is None and needs_codebook(config):
            codebook = load_codebook(backend.manifest)
        self.sink = TokenSink(config.tokens, config.frames_per_chunk, codebook)
        self._stable = None if config.stable_margin is None else StableTokens(codebook, config.stable_margin)
        self.times = {stage: TimeWindow() for stage in (*STAGES, "latency")}
        self.frames = 0  # written
        self.first_geometry: Geometry | None = None
        self.grid: tuple[int, int] | None = None
        self._sq_error = 0.0  # sum of squared errors of reconstructions, over all pixels and channels
        self._values = 0
        self.t_first: float | None = None  # perf_counter of the first frame handed over
        self.t_last: float | None = None  # perf_counter of the last frame written
        self._in_chunk = 0  # frames since the last keyframe the writer makes (chunk start, keyframe interval)
        self._index = 0  # frames through stabilize
        self._gaps_sent = 0  # source.gaps handed to the scheduler so far

    @property
    def stable(self) -> bool:
        return self._stable is not None

    # capture side

    def prepare(self, frame: Frame, index: int, t0: float, t1: float) -> Work:
        """Fit a frame for the model (the stream's ``index``-th; taken from the source between ``t0`` and ``t1``)."""
        images, geometry = prepare(frame.image, self.backend.manifest.downsample, self.config.fit)
        self._check_size(geometry, index)
        reference = to_bgr_uint8(frame.image) if self.reconstruct else None
        t2 = time.perf_counter()
        if self.t_first is None:
            self.t_first = t1
        ms = {"capture": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}
        return Work(frame.timestamp_ms, t1, images, geometry, reference, ms)

    def capture(self, push: Callable[[Work | Gap], bool], stopped: Callable[[], bool]) -> None:
        """Read the source until it ends, ``max_frames`` or ``stopped()``: each frame prepared, after the outages
        recorded before it; ``push`` hands an item on (False: the pipeline aborted, stop)."""
        frames = iter(self.source)
        taken = 0
        while not stopped():
            if self.config.max_frames is not None and taken >= self.config.max_frames:
                return
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            if frame is None or not all(push(gap) for gap in self.new_gaps()):
                return
            if not push(self.prepare(frame, taken, t0, t1)):
                return
            taken += 1

    def new_gaps(self) -> list[Gap]:
        """The source's outages not handed on yet (also those it recorded before giving up), oldest first."""
        gaps = [Gap(*gap) for gap in self.source.gaps[self._gaps_sent :]]
        self._gaps_sent += len(gaps)
        return gaps

    def _check_size(self, geometry: Geometry, index: int) -> None:
        first = self.first_geometry
        if first is None:
            self.first_geometry = geometry
        elif geometry != first:
            raise EdgeError(
                f"frame {index} is {geometry.width}x{geometry.height} but the stream started at {first.width}x"
                f"{first.height}: a token stream holds one frame size; pass --input-width {first.width} "
                f"--input-height {first.height} to resize every frame to it"
            )

    # inference side

    def stabilize(self, ids: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """Stable tokens for one frame: h x w int32 ids and their D x h x w float32 latents -> h x w int32 ids,
        refreshed at the writer's keyframes (chunk starts, the keyframe interval, after a gap)."""
        interval, per_chunk = self.config.keyframe_interval, self.config.frames_per_chunk
        refresh = self._in_chunk % per_chunk == 0 or bool(interval and self._index % interval == 0)
        self._in_chunk, self._index = self._in_chunk + 1, self._index + 1
        return self._stable.step(ids, latents, refresh)

    def gap_passed(self) -> None:
        """A gap ends the writer's chunk: the next frame is a keyframe."""
        self._in_chunk = 0

    # writer side

    def write_gap(self, gap: Gap) -> None:
        if self.sink.writer is not None:
            self.sink.write_gap(gap.from_ms, gap.to_ms)

    def write_frame(self, item: Work) -> None:
        ids = item.ids[0]
        if self.sink.writer is None:
            self.sink.open(self._header(item.geometry, ids.shape))
            self.grid = (int(ids.shape[0]), int(ids.shape[1]))
        t0 = time.perf_counter()
        self.sink.write(ids, item.timestamp_ms)
        item.ms["tokens"] = (time.perf_counter() - t0) * 1e3
        if self.output is not None:
            t1 = time.perf_counter()
            image = restore(from_model_output(item.decoded)[0], item.geometry)
            self._sq_error += cv2.norm(image, item.reference, cv2.NORM_L2SQR)
            self._values += image.size
            t2 = time.perf_counter()
            self.output.write(image)
            item.ms["postprocess"] = (t2 - t1) * 1e3
            item.ms["write"] = (time.perf_counter() - t2) * 1e3
        done = time.perf_counter()
        for stage, ms in item.ms.items():
            self.times[stage].add(ms)
        self.times["latency"].add((done - item.handed_s) * 1e3)
        self.frames += 1
        self.t_last = done

    def close(self, ok: bool) -> None:
        """Flush and close the token stream, then finalize the output (``ok``) or abandon a partial one."""
        try:
            self.sink.close()
        finally:
            if self.output is not None:
                self.output.close(ok=ok)

    def _header(self, geometry: Geometry, grid: tuple[int, int]) -> StreamHeader:
        manifest, config = self.backend.manifest, self.config
        metadata = {
            "preset": manifest.data.get("preset"),
            "source": redact(self.source.uri),
            "backend": self.backend.name,
            "precision": self.backend.precision,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return StreamHeader(
            manifest.codebook_sha256,
            manifest.codebook_size,
            int(grid[0]),
            int(grid[1]),
            **asdict(geometry),
            fps=float(self.source.fps),
            codec=config.codec,
            delta=config.delta,
            keyframe_interval=config.keyframe_interval,
            metadata=metadata,
            near=near_count(manifest.codebook_size) if config.codec == "ctx" else 0,
        )

    # figures

    @property
    def size(self) -> tuple[int, int] | None:
        g = self.first_geometry
        return (g.width, g.height) if g is not None else None

    def report(self, stopped: bool) -> RunReport:
        frames = self.frames
        stream_bytes = self.sink.bytes()
        elapsed = (self.t_last - self.t_first) if frames and self.t_first is not None else 0.0
        g = self.first_geometry
        grid = self.grid
        psnr = None
        if self.reconstruct and self._values:
            psnr = round(psnr_from_mse(self._sq_error / self._values), 3)
        return RunReport(
            frames=frames,
            dropped=int(self.source.dropped),
            gaps=list(self.source.gaps),
            elapsed_s=round(elapsed, 4),
            fps=round(frames / elapsed, 3) if elapsed > 0 else 0.0,
            latency_ms=self.times["latency"].summary(),
            stage_ms={s: self.times[s].summary() for s in STAGES if self.times[s].samples},
            bytes_per_frame=round(stream_bytes / frames, 2) if frames else 0.0,
            changed_ids_per_frame=self.sink.changed_per_frame(),
            stable_tokens=self.config.stable_margin,
            raw_bits_per_frame=raw_bits_per_frame(*grid, self.backend.manifest.codebook_size) if grid else 0,
            psnr_db=psnr,
            size=(g.width, g.height) if g else None,
            model_size=(g.model_width, g.model_height) if g else None,
            grid=grid,
            stopped=stopped,
        )
