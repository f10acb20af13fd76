"""Live sources: a capture thread keeps the newest frames, and an outage is reopened with backoff and recorded."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import cv2
import numpy as np

from ..errors import EdgeError
from ..live_options import (
    DEFAULT_BACKOFF_S,
    DEFAULT_LIVE_QUEUE,
    DEFAULT_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    MAX_BACKOFF_S,
)
from ..source_uri import display
from .base import DEFAULT_FPS, Capture, Frame, FrameSource, _sane_fps

log = logging.getLogger("provq.edge_runtime.sources")

JOIN_TIMEOUT_S = 3.0  # how long close() waits for a capture thread blocked in read()


class _Reader(threading.Thread):
    """Reads one opened capture until it fails or is abandoned, then releases it (OpenCV captures are released by
    the thread that reads them: releasing under a blocked read() is not safe)."""

    def __init__(self, capture: Capture, source: LiveSource, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.capture = capture
        self.source = source
        self.abandoned = False
        self.ended = False
        self.error = ""

    def run(self) -> None:
        try:
            while not self.abandoned:
                ok, image = self.capture.read()
                if not ok or image is None:
                    self.error = "read failed"
                    break
                if not self.source._push(self, image):
                    break
        except Exception as exc:  # a dying device can make OpenCV raise (cv2.error)
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            with contextlib.suppress(Exception):
                self.capture.release()
            self.source._reader_ended(self)


class LiveSource(FrameSource):
    """A camera or stream read by a capture thread into a ring of the newest ``live_queue`` frames.

    ``opener`` opens the device and returns a Capture (a cv2.VideoCapture); it is called again to reconnect.
    ``diagnose``, when given, is asked why the device does not open (None: no idea) for the error messages.
    Frames are H x W x 3 uint8 BGR; timestamps are monotonic capture times in ms from opening.
    """

    live = True

    def __init__(
        self,
        uri: str,
        opener: Callable[[], Capture],
        *,
        kind: str = "camera",
        width: int | None = None,
        height: int | None = None,
        rate: float | None = None,
        live_queue: int = DEFAULT_LIVE_QUEUE,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        hint: str = "check that it is connected and not in use",
        diagnose: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(uri, width, height)
        self.kind = kind
        self._opener = opener
        self._retries = retries
        self._backoff_s = backoff_s
        self._stall_timeout_s = stall_timeout_s
        self._hint = hint
        self._diagnose = diagnose
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ring: deque[Frame] = deque(maxlen=live_queue)
        self._readers: list[_Reader] = []
        self._reader: _Reader | None = None
        self._t0 = time.monotonic()
        self._captured = 0
        self._last_arrival = self._t0
        self._last_ts = 0.0

        capture = self._open_capture()
        if capture is None:
            self._closed = True
            raise EdgeError(f"cannot open {display(uri)}: {self._why_not_open()}")
        self.fps = float(rate or _sane_fps(_get(capture, cv2.CAP_PROP_FPS)) or DEFAULT_FPS)
        try:
            self._start_reader(capture)
            if not self._wait_first_frame():
                failed = self._reader.error if self._reader is not None and self._reader.ended else ""
                what = f"its first read failed ({failed})" if failed else f"sent no frame within {stall_timeout_s:g} s"
                raise EdgeError(f"{display(uri)} opened but {what}: {hint}")
            with self._cond:
                self.size = self._fitted_size(self._ring[0].image)
        except BaseException:
            self.close()
            raise

    @property
    def captured(self) -> int:
        """Frames read from the camera so far, over every connection: each was handed over, dropped (``dropped``)
        or is still in the ring."""
        return self._captured

    def describe(self) -> str:
        retries = "forever" if self._retries < 0 else str(self._retries)
        return (
            f"{display(self.uri)} -> {self.kind} | {self.size.width}x{self.size.height} | {self.fps:g} fps | live, "
            f"queue {self._ring.maxlen}, stall {self._stall_timeout_s:g} s, retries {retries}"
        )

    # capture thread side

    def _push(self, reader: _Reader, image: np.ndarray) -> bool:
        """Called by a reader for each frame; False tells an abandoned reader to stop."""
        now = time.monotonic()
        with self._cond:
            if reader.abandoned or self._closed:
                return False
            if len(self._ring) == self._ring.maxlen:
                self.dropped += 1
            timestamp = (now - self._t0) * 1000.0
            self._ring.append(Frame(self._captured, timestamp, image))
            self._captured += 1
            self._last_arrival = now
            self._last_ts = timestamp
            self._cond.notify_all()
        return True

    def _reader_ended(self, reader: _Reader) -> None:
        with self._cond:
            reader.ended = True
            self._cond.notify_all()

    # consumer side

    def _next_frame(self) -> Frame | None:
        while True:
            got = self._wait_frame()
            if isinstance(got, Frame):
                return Frame(got.index, got.timestamp_ms, self._fit(got.image))
            if got is None:
                return None
            self._recover(got)

    def _wait_frame(self) -> Frame | str | None:
        """The oldest frame in the ring; a reason string on a stall or failed read; None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._ring:
                    return self._ring.popleft()
                reader = self._reader
                if reader is not None and reader.ended:
                    return reader.error or "read failed"
                remaining = self._last_arrival + self._stall_timeout_s - time.monotonic()
                if remaining <= 0:
                    return f"no frame for {self._stall_timeout_s:g} s"
                self._cond.wait(remaining)

    def _recover(self, reason: str) -> None:
        """Reopen after an outage with exponential backoff; record the gap (up to now when the source is closed or
        gives up meanwhile); EdgeError when retries run out."""
        lost_ms = self._last_ts
        lost_at = time.monotonic()
        self._abandon_reader()
        limit = "unlimited" if self._retries < 0 else str(self._retries)
        log.warning("%s: %s at %.1f s; reconnecting (%s attempts)", display(self.uri), reason, lost_ms / 1000, limit)
        attempt = 0
        while True:
            attempt += 1
            if 0 <= self._retries < attempt:
                self.gaps.append((lost_ms, (time.monotonic() - self._t0) * 1000.0))
                self.close()
                raise EdgeError(
                    f"lost {display(self.uri)} ({reason}) and {self._retries} reconnect attempts over "
                    f"{time.monotonic() - lost_at:.1f} s did not bring it back: {self._why_not_open()}; or pass "
                    "--retries -1 to keep trying"
                )
            delay = min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            if self._stop.wait(delay):  # closed during the outage: it lasted until now
                self.gaps.append((lost_ms, (time.monotonic() - self._t0) * 1000.0))
                return
            capture = self._open_capture()
            if capture is None or not self._start_reader(capture):
                continue
            if self._wait_first_frame():
                with self._cond:
                    back_ms = self._ring[0].timestamp_ms if self._ring else self._last_ts
                self.gaps.append((lost_ms, back_ms))
                log.warning(
                    "%s: back after %.1f s (attempt %d)", display(self.uri), (back_ms - lost_ms) / 1000, attempt
                )
                return
            self._abandon_reader()

    def _why_not_open(self) -> str:
        """The diagnosis of a device that does not open, else the hint."""
        reason = None
        if self._diagnose is not None:
            try:
                reason = self._diagnose()
            except Exception as exc:  # a diagnosis must not hide the failure it explains
                log.debug("diagnosing %s failed: %s", display(self.uri), exc)
        return reason or self._hint

    def _open_capture(self) -> Capture | None:
        """An opened capture, or None (released) when the device cannot be opened now."""
        try:
            capture = self._opener()
        except Exception as exc:  # OpenCV raises cv2.error for some broken devices
            log.debug("open %s failed: %s", display(self.uri), exc)
            return None
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _start_reader(self, capture: Capture) -> bool:
        with self._cond:
            if self._closed:
                capture.release()
                return False
            self._readers = [r for r in self._readers if r.is_alive()]
            reader = _Reader(capture, self, name=f"provq-capture-{len(self._readers)}")
            self._readers.append(reader)
            self._reader = reader
            self._last_arrival = time.monotonic()
            reader.start()
        return True

    def _wait_first_frame(self) -> bool:
        """Wait up to stall_timeout_s for the current reader's first frame."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._ring or self._closed or (self._reader is not None and self._reader.ended),
                timeout=self._stall_timeout_s,
            )
            return bool(self._ring) and not self._closed

    def _abandon_reader(self) -> None:
        """Stop taking frames from the current reader; it releases its capture when its read() returns."""
        with self._cond:
            if self._reader is not None:
                self._reader.abandoned = True

    def _release(self) -> None:
        with self._cond:
            self._closed = True
            readers = list(self._readers)
            for reader in readers:
                reader.abandoned = True
            self._ring.clear()
            self._cond.notify_all()
        self._stop.set()
        for reader in readers:
            if reader is not threading.current_thread():
                reader.join(JOIN_TIMEOUT_S)
        stuck = sum(reader.is_alive() for reader in readers)
        if stuck:
            log.warning("%s: %d capture thread(s) still blocked in read(); they exit when it returns", self.uri, stuck)


def _get(capture: Capture, prop_id: int) -> float:
    try:
        return float(capture.get(prop_id))
    except Exception:
        return 0.0
