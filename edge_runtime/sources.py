"""Frame sources: video files, image folders and globs, V4L2/CSI cameras, RTSP and GStreamer pipelines, by URI.

    with open_source("sample://", width=240) as source:   # URIs: see source_uri.py (jetson-utils conventions)
        print(source.describe())
        for frame in source:                               # Frame(index, timestamp_ms, image)
            ...

Frame layouts, handed over as decoded (``preprocess.to_bgr_uint8`` converts any of them):
    video files, cameras, RTSP, CSI, gst   H x W x 3 uint8 BGR
    images                                 as stored (cv2.IMREAD_UNCHANGED): H x W x 3 uint8 BGR, H x W gray,
                                           H x W x 4 BGRA, uint8 or uint16 (16-bit PNG/TIFF)

Files and folders (``live`` False) drop nothing: each frame is decoded when the consumer asks for it, as fast as the
consumer goes. ``rate`` re-times them (like ffmpeg's input ``-r``: ``fps`` becomes ``rate``, timestamps
index * 1000 / rate) but does not pace them; ``realtime=True`` paces playback to the timestamps, to mimic a camera.
``loop=N`` plays them N more times (-1: forever), with indices and timestamps running on.

Live sources (``live`` True) are read by a capture thread into a ring of the newest ``live_queue`` frames; a frame
overwritten before the consumer took it counts in ``dropped`` (indices count captured frames, so drops leave holes).
A camera that sends no frame for ``stall_timeout_s`` or whose read fails is reopened with exponential backoff
(``backoff_s``, doubling, at most 30 s) up to ``retries`` times per outage (-1: forever); each outage is recorded in
``gaps`` as (last frame before, first frame after) in ms, and the run goes on. Opening fails fast: a camera that cannot
be opened, or sends nothing within ``stall_timeout_s``, is a one-line EdgeError at once.

Backends: V4L2 cameras through CAP_V4L2; rtsp:// through FFmpeg (software decode, with ``stall_timeout_s`` as its
open and read timeouts), or a decodebin GStreamer pipeline where OpenCV lacks FFmpeg; hardware decoding on a Jetson
is a gst:// pipeline of your own (rtspsrc ! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv ! ... ! appsink).
csi:// and gst:// need an OpenCV built with GStreamer (JetPack's, not PyPI's): otherwise a one-line EdgeError.

``width``/``height`` resize frames to that size (one of them alone keeps the aspect ratio); cameras are also asked
for it (V4L2 capture properties, the CSI pipeline's caps). Timestamps are milliseconds from the start: the container's
presentation time for video files, index / fps for images, monotonic capture time for live sources.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from .errors import EdgeError
from .preprocess import resize_to
from .source_uri import csi_pipeline, display, opencv_has, parse_source_uri, rtsp_pipeline

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # reported as fps when a source does not say (image folders, some RTSP servers)
MAX_BACKOFF_S = 30.0  # reconnect delays double from backoff_s up to this
JOIN_TIMEOUT_S = 3.0  # how long close() waits for a capture thread blocked in read()


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``image`` is H x W x 3 uint8 BGR, or for image files as stored (gray, BGRA, uint16)."""

    index: int  # position in the source; for live sources the capture count, so dropped frames leave holes
    timestamp_ms: float  # from the start of the source, increasing
    image: np.ndarray = field(repr=False)


class Size(NamedTuple):
    """Frame size in pixels, width first (as cv2.resize and --input-width/height); numpy shape is (height, width)."""

    width: int
    height: int


class Capture(Protocol):
    """What a live source reads from: cv2.VideoCapture, or a test double of a camera device."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop_id: int) -> float: ...

    def release(self) -> None: ...


class FrameSource:
    """An iterator of Frames with the source's facts; close it (or use ``with``) to release the device or file.

    Attributes: ``uri``, ``live``, ``fps`` (nominal rate, or the requested ``rate``), ``size`` (of the frames handed
    over; for image folders the first image's), ``total`` (frames to expect, None when unknown or endless),
    ``dropped`` (frames overwritten before the consumer took them), ``gaps`` ((from_ms, to_ms) outages).
    Iterating a closed source ends at once, so closing from another thread stops a consumer cleanly.
    """

    live = False
    kind = "source"

    def __init__(self, uri: str, width: int | None, height: int | None) -> None:
        self.uri = uri
        self.fps = DEFAULT_FPS
        self.size = Size(0, 0)
        self.total: int | None = None
        self.dropped = 0
        self.gaps: list[tuple[float, float]] = []
        self._width = width
        self._height = height
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._closed:
            raise StopIteration
        frame = self._next_frame()
        if frame is None:
            raise StopIteration
        return frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the file or device and join the capture threads; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._release()

    def describe(self) -> str:
        """One line for the log when a source opens, like jetson-utils' videoOptions::Print."""
        total = "endless" if self.total is None else f"{self.total} frames"
        return f"{display(self.uri)} -> {self.kind} | {self.size.width}x{self.size.height} | {self.fps:g} fps | {total}"

    def _next_frame(self) -> Frame | None:
        """The next frame, or None at the end."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Resize to the requested width/height (see _fitted_size); other frames pass unchanged."""
        size = self._fitted_size(image)
        return resize_to(image, size.width, size.height)

    def _fitted_size(self, image: np.ndarray) -> Size:
        """The size a frame is handed over at: the requested one, with one side alone keeping the aspect ratio."""
        ih, iw = image.shape[:2]
        w, h = self._width, self._height
        if w is None and h is None:
            return Size(iw, ih)
        if w is None:
            w = max(1, round(iw * h / ih))
        elif h is None:
            h = max(1, round(ih * w / iw))
        return Size(w, h)


def _sane_fps(value: float) -> float | None:
    """A container's or camera's frame rate if plausible (RTSP servers report 90000 and such)."""
    return value if 0.5 <= value <= 1000 else None


class VideoFileSource(FrameSource):
    """A video file read through OpenCV (FFmpeg backend). Frames are H x W x 3 uint8 BGR."""

    kind = "video file"

    def __init__(
        self,
        uri: str,
        path: str,
        *,
        width: int | None = None,
        height: int | None = None,
        rate: float | None = None,
        loop: int = 0,
        realtime: bool = False,
    ) -> None:
        super().__init__(uri, width, height)
        self._path = path
        self._cap = self._open()
        try:
            ok, image = self._cap.read()
            if not ok or image is None:
                raise EdgeError(
                    f"no frame could be decoded from {path}: the file is truncated or corrupt, or its codec is not in "
                    "this OpenCV build (re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4)"
                )
            native_fps = _sane_fps(self._cap.get(cv2.CAP_PROP_FPS))
            count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            first_pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        except BaseException:
            self._cap.release()
            raise
        self._retimed = rate is not None
        self.fps = float(rate or native_fps or DEFAULT_FPS)
        self.size = self._fitted_size(image)
        self.total = count * (loop + 1) if count > 0 and loop >= 0 else None
        self._pending: tuple[np.ndarray, float] | None = (image, first_pos)
        self._passes_left = loop
        self._pacer = _Pacer() if realtime else None
        self._index = 0  # frames handed over
        self._in_pass = 0  # frames handed over in this pass
        self._pass_offset_ms = 0.0
        self._last_ms = -1.0  # timestamp of the last frame within this pass
        self._last_ts = 0.0

    def _open(self) -> cv2.VideoCapture:
        backend = cv2.CAP_FFMPEG if opencv_has("FFMPEG") else cv2.CAP_ANY
        cap = cv2.VideoCapture(self._path, backend)
        if not cap.isOpened():
            cap.release()
            raise EdgeError(
                f"cannot open video {self._path}: it is not a video, or it is truncated or corrupt "
                "(check it with ffprobe; images go in a folder or a glob)"
            )
        return cap

    def _next_frame(self) -> Frame | None:
        if self._pending is not None:
            (image, pos_ms), self._pending = self._pending, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                if not self._start_next_pass():
                    return None
                ok, image = self._cap.read()
                if not ok or image is None:
                    return None
            pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        period = 1000.0 / self.fps
        in_pass_ms = self._in_pass * period
        if not self._retimed and np.isfinite(pos_ms) and pos_ms >= 0 and pos_ms > self._last_ms:
            in_pass_ms = pos_ms  # the container's presentation time
        elif self._in_pass > 0:
            in_pass_ms = max(in_pass_ms, self._last_ms + period)
        self._last_ms = in_pass_ms
        timestamp = self._pass_offset_ms + in_pass_ms
        frame = Frame(self._index, timestamp, self._fit(image))
        self._index += 1
        self._in_pass += 1
        self._last_ts = timestamp
        if self._pacer is not None:
            self._pacer.wait(timestamp)
        return frame

    def _start_next_pass(self) -> bool:
        """Reopen the file for the next loop pass; False when no passes are left."""
        if self._passes_left == 0:
            return False
        if self._passes_left > 0:
            self._passes_left -= 1
        self._cap.release()
        self._cap = self._open()
        self._pass_offset_ms = self._last_ts + 1000.0 / self.fps
        self._in_pass = 0
        self._last_ms = -1.0
        return True

    def _release(self) -> None:
        self._cap.release()


class ImageSequenceSource(FrameSource):
    """Image files (a folder, a glob or one file) read as stored: cv2.IMREAD_UNCHANGED keeps gray, BGRA and uint16."""

    kind = "images"

    def __init__(
        self,
        uri: str,
        files: tuple[Path, ...],
        *,
        width: int | None = None,
        height: int | None = None,
        rate: float | None = None,
        loop: int = 0,
        realtime: bool = False,
    ) -> None:
        super().__init__(uri, width, height)
        if not files:
            raise EdgeError(f"{display(uri)} names no images: pass a folder, a glob or image files")
        self._files = files
        first = self._load(files[0])
        self.fps = float(rate or DEFAULT_FPS)
        self.size = self._fitted_size(first)
        self.total = len(files) * (loop + 1) if loop >= 0 else None
        self._pending: np.ndarray | None = first
        self._passes_left = loop
        self._pacer = _Pacer() if realtime else None
        self._index = 0

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise EdgeError(f"cannot read image {path}: it is corrupt or not an image; replace or remove it")
        return image

    def _next_frame(self) -> Frame | None:
        position = self._index % len(self._files)
        if position == 0 and self._index > 0:
            if self._passes_left == 0:
                return None
            if self._passes_left > 0:
                self._passes_left -= 1
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            image = self._load(self._files[position])
        timestamp = self._index * 1000.0 / self.fps
        frame = Frame(self._index, timestamp, self._fit(image))
        self._index += 1
        if self._pacer is not None:
            self._pacer.wait(timestamp)
        return frame

    def _release(self) -> None:
        self._pending = None


class _Pacer:
    """Realtime playback of files: hands each frame over no earlier than its timestamp after the first frame."""

    def __init__(self) -> None:
        self._start: float | None = None

    def wait(self, timestamp_ms: float) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now - timestamp_ms / 1000.0
        delay = self._start + timestamp_ms / 1000.0 - now
        if delay > 0:
            time.sleep(delay)


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
        live_queue: int = 1,
        retries: int = 10,
        backoff_s: float = 0.5,
        stall_timeout_s: float = 5.0,
        hint: str = "check that it is connected and not in use",
    ) -> None:
        super().__init__(uri, width, height)
        self.kind = kind
        self._opener = opener
        self._retries = retries
        self._backoff_s = backoff_s
        self._stall_timeout_s = stall_timeout_s
        self._hint = hint
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
            raise EdgeError(f"cannot open {display(uri)}: {hint}")
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
        """Reopen after an outage with exponential backoff; record the gap; EdgeError when retries run out."""
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
                    f"{time.monotonic() - lost_at:.1f} s did not bring it back: {self._hint}, or pass --retries -1 "
                    "to keep trying"
                )
            delay = min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            if self._stop.wait(delay):
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


def open_source(
    uri: str,
    *,
    width: int | None = None,
    height: int | None = None,
    rate: float | None = None,
    loop: int = 0,
    live_queue: int = 1,
    retries: int = 10,
    backoff_s: float = 0.5,
    stall_timeout_s: float = 5.0,
    realtime: bool = False,
) -> FrameSource:
    """Open an input URI (see source_uri.py) as a FrameSource; a one-line EdgeError when it cannot be used.

    Args:
        uri: sample://, a video file or file://, a folder, a glob, an image, /dev/videoN, v4l2://, rtsp://, csi://N,
            gst://<pipeline ending in appsink>.
        width, height: --input-width/height: frames are resized to this (one alone keeps the aspect ratio); cameras
            are asked for it too.
        rate: --input-rate: the capture rate asked of V4L2/CSI cameras; for files it re-times (fps and timestamps)
            without pacing.
        loop: --input-loop: replay a file or folder this many more times; -1 forever; ignored for live sources.
        live_queue: live sources keep the newest this many frames when the consumer falls behind.
        retries: reconnect attempts per outage of a live source; -1 forever.
        backoff_s: first reconnect delay; it doubles each attempt, up to 30 s.
        stall_timeout_s: a live source that sends no frame for this long is reopened (also the wait for its first).
        realtime: play files at their frame rate instead of as fast as the consumer goes.
    """
    _check_options(
        width=width,
        height=height,
        rate=rate,
        loop=loop,
        live_queue=live_queue,
        retries=retries,
        backoff_s=backoff_s,
        stall_timeout_s=stall_timeout_s,
    )
    spec = parse_source_uri(uri)
    if spec.kind == "video":
        return VideoFileSource(uri, spec.location, width=width, height=height, rate=rate, loop=loop, realtime=realtime)
    if spec.kind == "images":
        return ImageSequenceSource(
            uri, spec.images, width=width, height=height, rate=rate, loop=loop, realtime=realtime
        )
    opener, kind, hint = _live_opener(
        spec.kind, spec.location, width=width, height=height, rate=rate, stall_timeout_s=stall_timeout_s
    )
    return LiveSource(
        uri,
        opener,
        kind=kind,
        width=width,
        height=height,
        rate=rate,
        live_queue=live_queue,
        retries=retries,
        backoff_s=backoff_s,
        stall_timeout_s=stall_timeout_s,
        hint=hint,
    )


def _check_options(
    *,
    width: int | None,
    height: int | None,
    rate: float | None,
    loop: int,
    live_queue: int,
    retries: int,
    backoff_s: float,
    stall_timeout_s: float,
) -> None:
    for name, value in (("--input-width", width), ("--input-height", height)):
        if value is not None and (int(value) != value or value < 1):
            raise EdgeError(f"{name} must be a positive whole number of pixels, got {value}")
    if rate is not None and not rate > 0:
        raise EdgeError(f"--input-rate must be a positive frame rate, got {rate}")
    if loop < -1:
        raise EdgeError(f"--input-loop must be 0 or more extra passes, or -1 for forever; got {loop}")
    if live_queue < 1:
        raise EdgeError(f"--live-queue must be at least 1 frame, got {live_queue}")
    if retries < -1:
        raise EdgeError(f"--retries must be 0 or more, or -1 for forever; got {retries}")
    if backoff_s < 0 or not stall_timeout_s > 0:
        raise EdgeError(f"backoff ({backoff_s}) must be >= 0 s and stall timeout ({stall_timeout_s}) > 0 s")


def _live_opener(
    kind: str, location: str, *, width: int | None, height: int | None, rate: float | None, stall_timeout_s: float
) -> tuple[Callable[[], Capture], str, str]:
    """(opener, description, hint when it fails) for a camera or stream."""
    if kind == "v4l2":
        match = re.fullmatch(r"/dev/video(\d+)", location)
        device: int | str = int(match.group(1)) if match else location
        hint = f"is another program using it, or is your user not in the 'video' group? (v4l2-ctl -d {location} --all)"

        def open_v4l2() -> Capture:
            capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
            if capture.isOpened():
                for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height)):
                    if value:
                        capture.set(prop, value)
                if rate:
                    capture.set(cv2.CAP_PROP_FPS, rate)
            return capture

        return open_v4l2, "V4L2 camera", hint
    if kind == "rtsp":
        hint = "check the address, the credentials and that the camera is reachable (try it with ffplay)"
        if opencv_has("FFMPEG"):
            timeout_ms = int(stall_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            return (lambda: cv2.VideoCapture(location, cv2.CAP_FFMPEG, params)), "RTSP stream (FFmpeg)", hint
        if opencv_has("GStreamer"):
            pipeline = rtsp_pipeline(location)
            return (lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)), "RTSP stream (GStreamer)", hint
        raise EdgeError("rtsp:// needs OpenCV built with FFmpeg or GStreamer, and this one has neither")
    if kind == "csi":
        pipeline = csi_pipeline(int(location), width, height, rate)
        hint = "check the ribbon cable and sensor id, and restart the daemon: sudo systemctl restart nvargus-daemon"
        return (lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)), "CSI camera", hint
    hint = "test the pipeline with gst-launch-1.0, ending it in fakesink instead of appsink"
    return (lambda: cv2.VideoCapture(location, cv2.CAP_GSTREAMER)), "GStreamer pipeline", hint
