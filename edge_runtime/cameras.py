"""Many cameras, one model: several sources batched through one backend, one token stream (and output) each.

    capture thread per source  next(source) -> StreamState.prepare     1 x 3 x H' x W' float32 RGB [-1, 1] per frame
    scheduler thread           one frame from every ready source per round, grouped by model size H' x W'
                               backend.encode per group                N x 3 x H' x W' -> N x h x w int32 ids
                               backend.decode per group (if outputs)   N x h x w -> N x 3 x H' x W' float32
    writer thread              StreamState.write_frame per frame       the source's .ptok and output

Fairness: a round takes at most one frame from each source, so no source waits for another's backlog; under load
every ready camera gets one slot per round. A live source keeps only its newest frame (one queued, as in
pipeline.py) and counts what it overwrote in its own ``dropped``; a source with a frame ready never waits for a live
one. File sources drop nothing: a round waits until every file that has not ended has a frame, so files batch
together; a file that ends ends its own stream (its .ptok closed, its output finalized) while the others go on.
Frames of one model size go into one call; a group larger than ``max_batch`` (the TensorRT engine's profile
maximum, or the caller's limit) is split into calls of at most ``max_batch`` frames. Stage times ``encode`` and
``decode`` are per call (each frame of a call gets the call's time); the rest are per frame.

An error in one source's capture (a frame size change, a camera that does not come back) ends that stream only
(its frames so far are finished and written) and is in the report's ``errors``; provq-run writes its figures, then
exits with it. An error in the scheduler or the writer stops every
stream at once (partial videos abandoned, token streams flushed up to the last frame written), as in pipeline.py.

    cameras = CameraPipeline(sources, backend, [PipelineConfig(tokens=Path(f"cams/{i}.ptok")) for i in range(4)])
    report = cameras.run(on_progress=print)      # a CamerasReport: .streams (one RunReport each) and totals
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .backends import Backend
from .errors import EdgeError
from .outputs import DisplayOutput, Output
from .pipeline import _END, POLL_S, Stages
from .source_uri import display
from .sources import FrameSource
from .stable import load_codebook
from .stream_state import Gap, PipelineConfig, RunReport, StreamState, Work, needs_codebook, run_threads

log = logging.getLogger(__name__)


class StreamProgress(NamedTuple):
    """One stream in a status-line snapshot."""

    frames: int  # written so far
    dropped: int
    gaps: int
    size: tuple[int, int] | None  # frame width, height


class CamerasProgress(NamedTuple):
    """A snapshot for the status line."""

    elapsed_s: float
    streams: list[StreamProgress]
    calls: int  # encoder calls so far
    batched: int  # frames in those calls


@dataclass
class CamerasReport:
    """What a many-camera run did: one RunReport per stream, and the totals over all of them."""

    streams: list[RunReport]
    errors: list[str | None]  # per stream: the capture error that ended it, None when it ended normally
    elapsed_s: float  # from the first frame handed over by any stream to the last one written by any
    calls: int  # encoder calls
    max_batch: int | None  # the most frames one call could take (None: no limit)
    stopped: bool

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams)

    @property
    def fps(self) -> float:
        """Frames of all streams per second of the run."""
        return round(self.frames / self.elapsed_s, 3) if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        totals = {
            "frames": self.frames,
            "fps": self.fps,
            "elapsed_s": self.elapsed_s,
            "dropped": sum(s.dropped for s in self.streams),
            "gaps": sum(len(s.gaps) for s in self.streams),
            "encoder_calls": self.calls,
            "frames_per_call": round(self.frames / self.calls, 3) if self.calls else 0.0,
            "max_batch": self.max_batch,
            "stopped": self.stopped,
        }
        streams = [{**s.to_json(), "error": e} for s, e in zip(self.streams, self.errors, strict=True)]
        return {"streams": streams, "totals": totals}


def split_batches(members: Sequence[Any], max_batch: int | None) -> list[Sequence[Any]]:
    """``members`` in calls of at most ``max_batch`` (None: one call)."""
    if not max_batch or len(members) <= max_batch:
        return [members]
    return [members[i : i + max_batch] for i in range(0, len(members), max_batch)]


def group_by_size(works: Sequence[tuple[int, Work]]) -> list[list[tuple[int, Work]]]:
    """(stream, work) pairs grouped by the model input size H' x W', in order of first appearance."""
    groups: dict[tuple[int, ...], list[tuple[int, Work]]] = {}
    for pair in works:
        groups.setdefault(pair[1].images.shape[1:], []).append(pair)
    return list(groups.values())


class CameraPipeline(Stages):
    """Streams several sources through one backend, batching frames of one model size into one call."""

    def __init__(
        self,
        sources: Sequence[FrameSource],
        backend: Backend,
        configs: Sequence[PipelineConfig],
        outputs: Sequence[Output | None] | None = None,
        *,
        max_batch: int | None = None,
    ) -> None:
        super().__init__()
        outputs = list(outputs) if outputs is not None else [None] * len(sources)
        if not (len(sources) == len(configs) == len(outputs)) or not sources:
            raise ValueError("one config and one output (or None) per source, and at least one source")
        self.sources = list(sources)
        self.backend = backend
        limits = [m for m in (max_batch, backend.max_batch) if m is not None]
        self.max_batch = min(limits) if limits else None
        codebook = load_codebook(backend.manifest) if any(map(needs_codebook, configs)) else None  # loaded once
        self.streams = [StreamState(s, backend, c, o, codebook)
                        for s, c, o in zip(sources, configs, outputs, strict=True)]  # fmt: skip
        self._caps = [1 if s.live else max(1, c.queue_size) for s, c in zip(sources, configs, strict=True)]
        self._queues: list[deque[Work | Gap | None]] = [deque() for _ in sources]
        self._ready = threading.Condition()
        self._to_write: queue.Queue[list[tuple[int, Work | Gap | None]] | None] = queue.Queue(2)
        self._errors: list[str | None] = [None] * len(sources)
        self._calls = 0
        self._batched = 0
        self._t_start = time.perf_counter()

    def progress(self) -> CamerasProgress:
        streams = [StreamProgress(st.frames, int(st.source.dropped), len(st.source.gaps), st.size)
                   for st in self.streams]  # fmt: skip
        return CamerasProgress(time.perf_counter() - self._t_start, streams, self._calls, self._batched)

    def run(self, on_progress: Callable[[CamerasProgress], None] | None = None, every_s: float = 0.5) -> CamerasReport:
        """Stream until every source ended (or ``max_frames`` each, or ``stop()``); raises the first scheduler or
        writer error after every thread ended. Capture errors end their stream only and are in ``report.errors``."""
        self._t_start = time.perf_counter()
        threads = [
            threading.Thread(target=self._capture, args=(i,), name=f"provq-capture-{i}", daemon=True)
            for i in range(len(self.sources))
        ]
        threads.append(threading.Thread(target=self._guard, args=(self._schedule,), name="provq-infer", daemon=True))
        threads.append(threading.Thread(target=self._guard, args=(self._write,), name="provq-write", daemon=True))
        run_threads(threads, lambda: self._wait(threads, on_progress, every_s), self._fail)
        if self._error is not None:
            raise self._error
        return self.report()

    def report(self) -> CamerasReport:
        firsts = [st.t_first for st in self.streams if st.frames and st.t_first is not None]
        lasts = [st.t_last for st in self.streams if st.t_last is not None]
        elapsed = max(lasts) - min(firsts) if firsts and lasts else 0.0
        stopped = self.stop_event.is_set()
        return CamerasReport(
            streams=[st.report(stopped) for st in self.streams],
            errors=list(self._errors),
            elapsed_s=round(elapsed, 4),
            calls=self._calls,
            max_batch=self.max_batch,
            stopped=stopped,
        )

    def _wait(
        self, threads: list[threading.Thread], on_progress: Callable[[CamerasProgress], None] | None, every_s: float
    ) -> None:
        """The main thread's loop: show display frames, close live sources on stop, report progress."""
        displays = [o for o in (st.output for st in self.streams) if isinstance(o, DisplayOutput)]
        next_report = time.perf_counter() + every_s
        while any(t.is_alive() for t in threads):
            if displays:
                if not all([d.pump(0.02 / len(displays)) for d in displays]):
                    self.stop()
            else:
                threads[-1].join(POLL_S)
            if self.stop_event.is_set() or self._abort.is_set():
                for source in self.sources:
                    if source.live and not source.closed:
                        source.close()  # wakes a capture thread waiting for its camera
            if on_progress is not None and time.perf_counter() >= next_report:
                next_report += every_s
                on_progress(self.progress())

    # capture: one thread per source

    def _capture(self, index: int) -> None:
        """A capture error ends this stream only (its frames so far are finished); the report names it."""
        source = self.sources[index]
        try:
            self._capture_frames(index)
        except EdgeError as err:
            self._errors[index] = str(err)
            log.warning("input %d (%s) ended: %s", index, display(source.uri), err)
        except BaseException as err:  # not a source's known failure: stop every stream
            self._fail(err)
        finally:
            source.close()
        if all(self._push(index, gap) for gap in self.streams[index].new_gaps()):  # an outage it then gave up on
            self._push(index, _END)

    def _capture_frames(self, index: int) -> None:
        self.streams[index].capture(lambda item: self._push(index, item), self._stopped)

    def _stopped(self) -> bool:
        return self.stop_event.is_set() or self._abort.is_set()

    def _push(self, index: int, item: Work | Gap | None) -> bool:
        """Queue an item for the scheduler, waiting while the stream's queue is full; False when the run aborts."""
        q, cap = self._queues[index], self._caps[index]
        with self._ready:
            while len(q) >= cap:
                if self._abort.is_set():
                    return False
                self._ready.wait(POLL_S)
            q.append(item)
            self._ready.notify_all()
        return True

    # the scheduler

    def _take(self, ended: list[bool]) -> list[tuple[int, Work | Gap | None]] | None:
        """One round: the head item of every stream that has one, once no file stream that has not ended is empty
        and at least one stream is ready; None when every stream ended or the run aborts."""
        with self._ready:
            while not self._abort.is_set():
                active = [i for i, done in enumerate(ended) if not done]
                if not active:
                    return None
                ready = [i for i in active if self._queues[i]]
                files_waiting = any(not self.sources[i].live and not self._queues[i] for i in active)
                if ready and not files_waiting:
                    taken = [(i, self._queues[i].popleft()) for i in ready]
                    self._ready.notify_all()
                    return taken
                self._ready.wait(POLL_S)
        return None

    def _schedule(self) -> None:
        ended = [False] * len(self.sources)
        while (taken := self._take(ended)) is not None:
            works: list[tuple[int, Work]] = []
            for index, item in taken:
                if item is _END:
                    ended[index] = True
                elif isinstance(item, Gap):
                    self.streams[index].gap_passed()
                else:
                    works.append((index, item))
            for group in group_by_size(works):
                for batch in split_batches(group, self.max_batch):
                    self._infer(batch)
            if not self._put(self._to_write, taken):
                return
        self._put(self._to_write, _END)

    def _infer(self, batch: Sequence[tuple[int, Work]]) -> None:
        """One encoder call (and one decoder call when any stream reconstructs) for frames of one model size."""
        images = np.concatenate([work.images for _, work in batch])
        t0 = time.perf_counter()
        if any(self.streams[i].stable for i, _ in batch):
            ids, latents = self.backend.encode_latents(images)
            ids = np.stack([
                self.streams[i].stabilize(ids[k], latents[k]) if self.streams[i].stable else ids[k]
                for k, (i, _) in enumerate(batch)
            ])  # fmt: skip
        else:
            ids = self.backend.encode(images)
        t1 = time.perf_counter()
        self._calls += 1
        self._batched += len(batch)
        decoded = None
        if any(self.streams[i].reconstruct for i, _ in batch):
            decoded = self.backend.decode(ids)
        t2 = time.perf_counter()
        for k, (index, work) in enumerate(batch):
            work.ids = ids[k : k + 1]
            work.ms["encode"] = (t1 - t0) * 1e3
            if decoded is not None and self.streams[index].reconstruct:
                work.decoded = decoded[k : k + 1]
                work.ms["decode"] = (t2 - t1) * 1e3

    # the writer

    def _write(self) -> None:
        closed = [False] * len(self.streams)
        ok = False
        try:
            while (taken := self._get(self._to_write)) is not _END:
                for index, item in taken:
                    state = self.streams[index]
                    if item is _END:
                        closed[index] = True
                        state.close(ok=True)
                    elif isinstance(item, Gap):
                        state.write_gap(item)
                    else:
                        state.write_frame(item)
            ok = not self._abort.is_set()
        finally:
            for index, state in enumerate(self.streams):
                if not closed[index]:
                    state.close(ok=ok)
