"""The streaming pipeline: frames -> token ids (-> reconstructions), with capture, inference and writing overlapped.

    capture thread    next(source)                  Frame.image H x W x 3 uint8 BGR (or as stored for images)
                      preprocess.prepare            1 x 3 x H' x W' float32 RGB [-1, 1] + Geometry
    inference thread  backend.encode                1 x h x w int32 ids in [0, K), h = H' / ds, w = W' / ds
                      StableTokens.step (opt-in)    the same ids, with near-boundary cells held (stable.py)
                      backend.decode (if output)    1 x 3 x H' x W' float32 RGB [-1, 1]
    writer thread     TokenSink.write               the ids coded into the .ptok (or a scratch stream that counts bytes)
                      from_model_output + restore   H x W x 3 uint8 BGR at the frame's own size; PSNR vs the input
                      output.write                  the reconstruction

The threads are joined by bounded queues: ``queue_size`` frames for files, which therefore drop nothing (the capture
thread waits), and one frame for live sources, which keep only their newest frame and count what they overwrote in
``source.dropped``. Stage times (capture, preprocess, encode, decode, postprocess, tokens: coding the ids into the
stream, write: the reconstruction's output; decode, postprocess and write only when reconstructing) and the latency
(from the source handing a frame over to its tokens and reconstruction being written) are kept per frame for the
most recent ``WINDOW`` frames and summarized as p50 / p95 / mean.

``stop()`` (from a signal handler, or when a display window closes) ends the stream cleanly: no new frame is taken,
the frames already in the queues are finished, the token stream is flushed and closed and the output finalized. An
error in capture (a frame size change, a camera that does not come back) ends the stream the same way, then ``run``
raises it. An exception in inference or writing stops every stage at once and abandons a partial video; ``run``
raises it (the first error only) after all threads ended, with the token stream flushed up to the last frame written.

    pipeline = Pipeline(source, backend, PipelineConfig(tokens=Path("out.ptok")), output=open_output("out.mp4", 25))
    report = pipeline.run(on_progress=print)     # blocks; returns a RunReport (to_json() for --json)

``run`` consumes the source: it is closed when capture ends. The output is finalized (or abandoned on an error).
"""

from __future__ import annotations

import queue
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

from .backends import Backend
from .ctxcoder import near_count
from .errors import EdgeError
from .outputs import DisplayOutput, Output
from .preprocess import Geometry, from_model_output, prepare, restore, to_bgr_uint8
from .quality import psnr_from_mse
from .source_uri import redact
from .sources import FrameSource
from .stable import StableTokens, load_codebook
from .token_sink import TokenSink
from .tokenstream import StreamHeader, raw_bits_per_frame

STAGES = ("capture", "preprocess", "encode", "decode", "postprocess", "tokens", "write")
WINDOW = 1 << 14  # frames kept for the percentiles
POLL_S = 0.1  # how often blocked threads look at the stop and abort flags


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does with each frame; the defaults are provq-run's."""

    fit: str = "pad"  # how frames are fitted to a multiple of the downsample factor: pad | crop | resize
    max_frames: int | None = None  # stop after this many frames; None: until the source ends or stop()
    tokens: Path | None = None  # the .ptok to write (must not exist); None: bytes are counted in a scratch stream
    codec: str = "ctx"  # token stream coding: ctx (context-coded ids) | zlib | zstd | none
    delta: bool = True  # code frames against the previous one (lossless)
    keyframe_interval: int = 0  # also a keyframe every N frames; 0: only at chunk starts
    frames_per_chunk: int = 30  # frames per .ptok chunk: what a crash can lose at most
    queue_size: int = 2  # frames between stages for file sources (live sources use 1)
    stable_margin: float | None = None  # stable tokens (edge_runtime/stable.py) with this margin; None: off


class Progress(NamedTuple):
    """A snapshot for the status line."""

    frames: int  # written so far
    elapsed_s: float
    stream_bytes: int  # token stream bytes on disk so far (header included)
    stream_frames: int  # frames in those bytes (chunks are flushed every frames_per_chunk frames)
    size: tuple[int, int] | None  # frame width, height
    grid: tuple[int, int] | None  # token grid h, w


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


class _Window:
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
class _Work:
    """One frame travelling through the queues."""

    timestamp_ms: float
    handed_s: float  # perf_counter when the source handed the frame over
    images: np.ndarray  # 1 x 3 x H' x W' float32 RGB [-1, 1]
    geometry: Geometry
    reference: np.ndarray | None  # H x W x 3 uint8 BGR input frame, kept only when reconstructing
    ms: dict[str, float]  # stage -> milliseconds
    ids: np.ndarray | None = None  # 1 x h x w int32
    decoded: np.ndarray | None = None  # 1 x 3 x H' x W' float32


class _Gap(NamedTuple):
    from_ms: float
    to_ms: float


_END = None  # end-of-stream marker in the queues


class Pipeline:
    """Streams one source through one backend into a token stream and, optionally, an output of reconstructions."""

    def __init__(
        self, source: FrameSource, backend: Backend, config: PipelineConfig, output: Output | None = None
    ) -> None:
        self.source = source
        self.backend = backend
        self.config = config
        self.output = output
        self.reconstruct = output is not None
        self.stop_event = threading.Event()  # set by stop(): finish what is queued, then end
        self._abort = threading.Event()  # set on an error: end now
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        size = 1 if source.live else max(1, config.queue_size)
        self._to_infer: queue.Queue[_Work | _Gap | None] = queue.Queue(size)
        self._to_write: queue.Queue[_Work | _Gap | None] = queue.Queue(size)
        self._times = {stage: _Window() for stage in (*STAGES, "latency")}
        need_codebook = config.codec == "ctx" or config.stable_margin is not None
        codebook = load_codebook(backend.manifest) if need_codebook else None  # K x D float32
        self._sink = TokenSink(config.tokens, config.frames_per_chunk, codebook)
        self._stable = None if config.stable_margin is None else StableTokens(codebook, config.stable_margin)
        self._frames = 0
        self._gaps_sent = 0  # source.gaps queued for the writer
        self._first_geometry: Geometry | None = None
        self._grid: tuple[int, int] | None = None
        self._sq_error = 0.0  # sum of squared errors of reconstructions, over all pixels and channels
        self._values = 0
        self._t_first: float | None = None  # first frame handed over
        self._t_last: float | None = None  # last frame written
        self._t_start = time.perf_counter()

    def stop(self) -> None:
        """Ask for a clean end: safe from signal handlers and other threads."""
        self.stop_event.set()

    def progress(self) -> Progress:
        size = None
        if self._first_geometry is not None:
            size = (self._first_geometry.width, self._first_geometry.height)
        sink, elapsed = self._sink, time.perf_counter() - self._t_start
        return Progress(self._frames, elapsed, sink.bytes(), sink.flushed_frames, size, self._grid)

    def run(self, on_progress: Callable[[Progress], None] | None = None, every_s: float = 0.5) -> RunReport:
        """Stream until the source ends, ``max_frames`` or ``stop()``; raises the first stage error (EdgeError...)."""
        self._t_start = time.perf_counter()
        threads = [
            threading.Thread(target=self._capture, name="provq-capture", daemon=True),
            threading.Thread(target=self._guard, args=(self._infer,), name="provq-infer", daemon=True),
            threading.Thread(target=self._guard, args=(self._write,), name="provq-write", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            self._wait(threads, on_progress, every_s)
        except BaseException:  # a second Ctrl-C in the main thread: end now, keeping what was flushed
            self._fail(EdgeError("interrupted"))
            for thread in threads:
                thread.join(5.0)
            raise
        if self._error is not None:
            raise self._error
        return self._report()

    def _wait(
        self, threads: list[threading.Thread], on_progress: Callable[[Progress], None] | None, every_s: float
    ) -> None:
        """The main thread's loop: show display frames, close live sources on stop, report progress."""
        next_report = time.perf_counter() + every_s
        while any(t.is_alive() for t in threads):
            if isinstance(self.output, DisplayOutput):
                if not self.output.pump(0.02):
                    self.stop()
            else:
                threads[-1].join(POLL_S)
            if (self.stop_event.is_set() or self._abort.is_set()) and self.source.live and not self.source.closed:
                self.source.close()  # wakes a capture thread waiting for the camera
            if on_progress is not None and time.perf_counter() >= next_report:
                next_report += every_s
                on_progress(self.progress())

    # the three stages

    def _guard(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except BaseException as err:
            self._fail(err)

    def _record(self, err: BaseException) -> None:
        """Keep the first error only: the one ``run`` raises."""
        with self._lock:
            if self._error is None:
                self._error = err

    def _fail(self, err: BaseException) -> None:
        self._record(err)
        self._abort.set()

    def _put(self, q: queue.Queue, item: _Work | _Gap | None) -> bool:
        """Blocking put that gives up when the pipeline aborts."""
        while not self._abort.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> _Work | _Gap | None:
        while not self._abort.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _END

    def _capture(self) -> None:
        """Capture-stage errors (a size change, a camera gone for good) end the stream like a stop, so that the
        frames captured before are still finished and written; ``run`` raises the error afterwards. An outage the
        source recorded before it gave up is written too."""
        try:
            self._capture_frames()
        except BaseException as err:
            self._record(err)
        finally:
            self.source.close()  # no more frames are needed; a file is released by the thread that reads it
        if self._forward_gaps():
            self._put(self._to_infer, _END)

    def _forward_gaps(self) -> bool:
        """Queue the source's outages not queued yet; False when the pipeline aborted."""
        for gap in self.source.gaps[self._gaps_sent :]:
            if not self._put(self._to_infer, _Gap(*gap)):
                return False
            self._gaps_sent += 1
        return True

    def _capture_frames(self) -> None:
        source, ds = self.source, self.backend.manifest.downsample
        frames = iter(source)
        taken = 0
        while not (self.stop_event.is_set() or self._abort.is_set()):
            if self.config.max_frames is not None and taken >= self.config.max_frames:
                return
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            if frame is None or not self._forward_gaps():
                return
            images, geometry = prepare(frame.image, ds, self.config.fit)
            self._check_size(geometry, taken)
            reference = to_bgr_uint8(frame.image) if self.reconstruct else None
            t2 = time.perf_counter()
            ms = {"capture": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}
            if self._t_first is None:
                self._t_first = t1
            if not self._put(self._to_infer, _Work(frame.timestamp_ms, t1, images, geometry, reference, ms)):
                return
            taken += 1

    def _check_size(self, geometry: Geometry, index: int) -> None:
        first = self._first_geometry
        if first is None:
            self._first_geometry = geometry
        elif geometry != first:
            raise EdgeError(
                f"frame {index} is {geometry.width}x{geometry.height} but the stream started at {first.width}x"
                f"{first.height}: a token stream holds one frame size; pass --input-width {first.width} "
                f"--input-height {first.height} to resize every frame to it"
            )

    def _infer(self) -> None:
        in_chunk = 0  # frames since the last keyframe the writer makes (chunk start, keyframe interval)
        interval, per_chunk = self.config.keyframe_interval, self.config.frames_per_chunk
        index = 0
        while (item := self._get(self._to_infer)) is not _END:
            if isinstance(item, _Work):
                t0 = time.perf_counter()
                if self._stable is None:
                    item.ids = self.backend.encode(item.images)
                else:
                    ids, latents = self.backend.encode_latents(item.images)
                    refresh = in_chunk % per_chunk == 0 or bool(interval and index % interval == 0)
                    item.ids = self._stable.step(ids[0], latents[0], refresh)[None]
                in_chunk, index = in_chunk + 1, index + 1
                t1 = time.perf_counter()
                item.ms["encode"] = (t1 - t0) * 1e3
                if self.reconstruct:
                    item.decoded = self.backend.decode(item.ids)
                    item.ms["decode"] = (time.perf_counter() - t1) * 1e3
            else:
                in_chunk = 0  # a gap ends the writer's chunk
            if not self._put(self._to_write, item):
                return
        self._put(self._to_write, _END)

    def _write(self) -> None:
        ok = False
        try:
            while (item := self._get(self._to_write)) is not _END:
                if isinstance(item, _Gap):
                    if self._sink.writer is not None:
                        self._sink.write_gap(item.from_ms, item.to_ms)
                    continue
                self._write_frame(item)
            ok = not self._abort.is_set()
        finally:
            try:
                self._sink.close()
            finally:
                if self.output is not None:
                    self.output.close(ok=ok)

    def _write_frame(self, item: _Work) -> None:
        ids = item.ids[0]
        if self._sink.writer is None:
            self._sink.open(self._header(item.geometry, ids.shape))
            self._grid = (int(ids.shape[0]), int(ids.shape[1]))
        t0 = time.perf_counter()
        self._sink.write(ids, item.timestamp_ms)
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
            self._times[stage].add(ms)
        self._times["latency"].add((done - item.handed_s) * 1e3)
        self._frames += 1
        self._t_last = done

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

    def _report(self) -> RunReport:
        frames = self._frames
        stream_bytes = self._sink.bytes()
        elapsed = (self._t_last - self._t_first) if frames and self._t_first is not None else 0.0
        g = self._first_geometry
        grid = self._grid
        psnr = None
        if self.reconstruct and self._values:
            mse = self._sq_error / self._values
            psnr = round(psnr_from_mse(mse), 3)
        return RunReport(
            frames=frames,
            dropped=int(self.source.dropped),
            gaps=list(self.source.gaps),
            elapsed_s=round(elapsed, 4),
            fps=round(frames / elapsed, 3) if elapsed > 0 else 0.0,
            latency_ms=self._times["latency"].summary(),
            stage_ms={s: self._times[s].summary() for s in STAGES if self._times[s].samples},
            bytes_per_frame=round(stream_bytes / frames, 2) if frames else 0.0,
            changed_ids_per_frame=self._sink.changed_per_frame(),
            stable_tokens=self.config.stable_margin,
            raw_bits_per_frame=raw_bits_per_frame(*grid, self.backend.manifest.codebook_size) if grid else 0,
            psnr_db=psnr,
            size=(g.width, g.height) if g else None,
            model_size=(g.model_width, g.model_height) if g else None,
            grid=grid,
            stopped=self.stop_event.is_set(),
        )
