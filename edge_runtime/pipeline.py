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
most recent ``stream_state.WINDOW`` frames and summarized as p50 / p95 / mean. The per-stream half (preparing,
stable tokens, the token sink, the output, the figures) is ``stream_state.StreamState``, shared with the
multi-camera scheduler (cameras.py).

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
from collections.abc import Callable
from typing import Any, NamedTuple

from .backends import Backend
from .outputs import DisplayOutput, Output
from .sources import FrameSource
from .stream_state import Gap, PipelineConfig, RunReport, StreamState, Work, run_threads

__all__ = ["Pipeline", "PipelineConfig", "Progress", "RunReport"]

POLL_S = 0.1  # how often blocked threads look at the stop and abort flags


class Progress(NamedTuple):
    """A snapshot for the status line."""

    frames: int  # written so far
    elapsed_s: float
    stream_bytes: int  # token stream bytes on disk so far (header included)
    stream_frames: int  # frames in those bytes (chunks are flushed every frames_per_chunk frames)
    size: tuple[int, int] | None  # frame width, height
    grid: tuple[int, int] | None  # token grid h, w


_END = None  # end-of-stream marker in the queues


class Stages:
    """What a threaded scheduler shares: the stop and abort flags, the first error, and queue calls that give up
    when the run aborts. ``Pipeline`` and ``cameras.CameraPipeline`` are ones."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()  # set by stop(): finish what is queued, then end
        self._abort = threading.Event()  # set on an error: end now
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Ask for a clean end: safe from signal handlers and other threads."""
        self.stop_event.set()

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

    def _put(self, q: queue.Queue, item: Any) -> bool:
        """Blocking put that gives up when the pipeline aborts."""
        while not self._abort.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self._abort.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _END


class Pipeline(Stages):
    """Streams one source through one backend into a token stream and, optionally, an output of reconstructions."""

    def __init__(
        self, source: FrameSource, backend: Backend, config: PipelineConfig, output: Output | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self.backend = backend
        self.config = config
        self.output = output
        self.reconstruct = output is not None
        size = 1 if source.live else max(1, config.queue_size)
        self._to_infer: queue.Queue[Work | Gap | None] = queue.Queue(size)
        self._to_write: queue.Queue[Work | Gap | None] = queue.Queue(size)
        self._state = StreamState(source, backend, config, output)
        self._t_start = time.perf_counter()

    def progress(self) -> Progress:
        state, elapsed = self._state, time.perf_counter() - self._t_start
        sink = state.sink
        return Progress(state.frames, elapsed, sink.bytes(), sink.flushed_frames, state.size, state.grid)

    def run(self, on_progress: Callable[[Progress], None] | None = None, every_s: float = 0.5) -> RunReport:
        """Stream until the source ends, ``max_frames`` or ``stop()``; raises the first stage error (EdgeError...)."""
        self._t_start = time.perf_counter()
        threads = [
            threading.Thread(target=self._capture, name="provq-capture", daemon=True),
            threading.Thread(target=self._guard, args=(self._infer,), name="provq-infer", daemon=True),
            threading.Thread(target=self._guard, args=(self._write,), name="provq-write", daemon=True),
        ]
        run_threads(threads, lambda: self._wait(threads, on_progress, every_s), self._fail)
        if self._error is not None:
            raise self._error
        return self._state.report(self.stop_event.is_set())

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

    def _capture(self) -> None:
        """Capture-stage errors (a size change, a camera gone for good) end the stream like a stop, so that the
        frames captured before are still finished and written; ``run`` raises the error afterwards."""
        try:
            self._capture_frames()
        except BaseException as err:
            self._record(err)
        finally:
            self.source.close()  # no more frames are needed; a file is released by the thread that reads it
        if all(self._put(self._to_infer, gap) for gap in self._state.new_gaps()):  # an outage it then gave up on
            self._put(self._to_infer, _END)

    def _capture_frames(self) -> None:
        self._state.capture(lambda item: self._put(self._to_infer, item), self._stopped)

    def _stopped(self) -> bool:
        return self.stop_event.is_set() or self._abort.is_set()

    def _infer(self) -> None:
        state = self._state
        while (item := self._get(self._to_infer)) is not _END:
            if isinstance(item, Work):
                t0 = time.perf_counter()
                if not state.stable:
                    item.ids = self.backend.encode(item.images)
                else:
                    ids, latents = self.backend.encode_latents(item.images)
                    item.ids = state.stabilize(ids[0], latents[0])[None]
                t1 = time.perf_counter()
                item.ms["encode"] = (t1 - t0) * 1e3
                if self.reconstruct:
                    item.decoded = self.backend.decode(item.ids)
                    item.ms["decode"] = (time.perf_counter() - t1) * 1e3
            else:
                state.gap_passed()
            if not self._put(self._to_write, item):
                return
        self._put(self._to_write, _END)

    def _write(self) -> None:
        ok = False
        try:
            while (item := self._get(self._to_write)) is not _END:
                if isinstance(item, Gap):
                    self._state.write_gap(item)
                else:
                    self._state.write_frame(item)
            ok = not self._abort.is_set()
        finally:
            self._state.close(ok)
