"""The decoders behind VideoFileSource: PyAV where it is installed, else OpenCV's FFmpeg backend.

Both read one video stream front to back and give ``(image, pos_ms)`` per frame: image H x W x 3 uint8 BGR, turned
as the container's display matrix says, and pos_ms the frame's presentation time in milliseconds from the stream's
start (NaN when the container has none).

Why PyAV first: decoding H.264 or HEVC is exact by the standard, the conversion of the decoded YUV to BGR is not.
OpenCV hands it to FFmpeg's swscale, whose SIMD kernels differ between CPUs: on the shipped clip 65% of the BGR
values differ by 1 to 3 levels between an aarch64 and an x86 machine, which changes about 7% of the token ids. With
PyAV, 8-bit limited-range 4:2:0 frames (what cameras and encoders write) are converted by OpenCV's
``cvtColor(COLOR_YUV2BGR_I420)`` (BT.601, as swscale's default, and bit-identical on x86 and aarch64), so one file
gives the same pixels, hence the same tokens, on a workstation and on a Jetson. Other formats (full range, 4:2:2,
10-bit) go through PyAV's swscale conversion to bgr24.
"""

from __future__ import annotations

import importlib
from collections import deque
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import EdgeError
from ..source_uri import opencv_has
from .base import _sane_fps

# display-matrix rotation (degrees counter-clockwise, as FFmpeg's av_display_rotation_get reports it) -> the turn
# that shows the frame upright
_UPRIGHT = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


class VideoReader(Protocol):
    """One open video file; ``fps`` None when the container has no plausible rate, ``count`` 0 when unknown."""

    decoder: str  # "PyAV" or "OpenCV"
    fps: float | None
    count: int

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next frame and its time, or None at the end of the file."""
        ...

    def release(self) -> None: ...


def cannot_open(path: str) -> EdgeError:
    return EdgeError(
        f"cannot open video {path}: it is not a video, or it is truncated or corrupt "
        "(check it with ffprobe; images go in a folder or a glob)"
    )


def import_pyav() -> Any | None:
    """The ``av`` module, or None when PyAV is not installed (the runtime then decodes with OpenCV)."""
    try:
        return importlib.import_module("av")
    except ImportError:
        return None


def open_video(path: str) -> VideoReader:
    """Open ``path`` with PyAV if installed, else with OpenCV; EdgeError (one line) when it is no readable video."""
    av = import_pyav()
    return PyAVReader(av, path) if av is not None else OpenCVReader(path)


class OpenCVReader:
    """cv2.VideoCapture on the FFmpeg backend (any backend when this OpenCV has no FFmpeg)."""

    decoder = "OpenCV"

    def __init__(self, path: str) -> None:
        backend = cv2.CAP_FFMPEG if opencv_has("FFMPEG") else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(path, backend)
        if not self._cap.isOpened():
            self._cap.release()
            raise cannot_open(path)
        self.fps = _sane_fps(self._cap.get(cv2.CAP_PROP_FPS))
        self.count = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def read(self) -> tuple[np.ndarray, float] | None:
        ok, image = self._cap.read()
        if not ok or image is None:
            return None
        return image, self._cap.get(cv2.CAP_PROP_POS_MSEC)

    def release(self) -> None:
        self._cap.release()


class PyAVReader:
    """The first video stream of a container through PyAV, decoded with FFmpeg's frame threads.

    A packet the decoder rejects is skipped, as FFmpeg's own tools do; the file ends at the demuxer's end or at data
    it cannot parse.
    """

    decoder = "PyAV"

    def __init__(self, av: Any, path: str) -> None:
        self._av = av
        try:
            self._container = av.open(path)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise cannot_open(path) from err
        if not self._container.streams.video:
            self._container.close()
            raise cannot_open(path)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.guessed_rate or stream.average_rate
        self.fps = _sane_fps(float(rate)) if rate else None
        self.count = int(stream.frames) or _estimated_count(stream, self.fps)
        self._time_base = float(stream.time_base) if stream.time_base else None
        self._start = stream.start_time or 0
        self._packets = self._container.demux(stream)
        self._ready: deque[Any] = deque()
        self._clock = BestEffortClock()

    def read(self) -> tuple[np.ndarray, float] | None:
        self._decode_until(2)  # one frame ahead, so that the clock has seen whether this frame's pts is out of order
        if not self._ready:
            return None
        frame = self._ready.popleft()
        pts = self._clock.time_of(frame.pts, frame.dts)
        pos_ms = float("nan")
        if pts is not None and self._time_base is not None:
            pos_ms = (pts - self._start) * self._time_base * 1000.0
        return _upright(_bgr(frame), frame), pos_ms

    def _decode_until(self, frames: int) -> None:
        """Decode until ``frames`` are queued or the file ends."""
        while len(self._ready) < frames:
            packet = self._next_packet()
            if packet is None:
                return
            try:
                decoded = packet.decode()  # the last (empty) packet flushes the decoder
            except self._av.FFmpegError:
                continue
            for frame in decoded:
                self._clock.observe(frame.pts, frame.dts)
            self._ready.extend(decoded)

    def _next_packet(self) -> Any | None:
        try:
            return next(self._packets)
        except (StopIteration, self._av.FFmpegError):
            return None

    def release(self) -> None:
        self._ready.clear()
        self._container.close()


class BestEffortClock:
    """Frame times as FFmpeg's ``best_effort_timestamp`` picks them (the rule of libavcodec's guess_correct_pts):
    a frame's pts, unless pts have gone backwards more often than dts in the frames decoded so far (AVI files with
    B-frames carry pts in packet order), then its dts. The reader decodes one frame ahead, so a frame's choice
    already counts the next frame's faults."""

    def __init__(self) -> None:
        self._faulty_pts = self._faulty_dts = 0
        self._last_pts: int | None = None
        self._last_dts: int | None = None

    def observe(self, pts: int | None, dts: int | None) -> None:
        """Count a decoded frame's timestamps (in decoding order)."""
        if dts is not None:
            self._faulty_dts += self._last_dts is not None and dts <= self._last_dts
            self._last_dts = dts
        elif pts is not None:
            self._last_dts = pts
        if pts is not None:
            self._faulty_pts += self._last_pts is not None and pts <= self._last_pts
            self._last_pts = pts
        elif dts is not None:
            self._last_pts = dts

    def time_of(self, pts: int | None, dts: int | None) -> int | None:
        """The time of an observed frame, in stream time-base units (None when it has neither)."""
        if pts is not None and (self._faulty_pts <= self._faulty_dts or dts is None):
            return pts
        return dts


def _estimated_count(stream: Any, fps: float | None) -> int:
    """Frames from the stream's duration when the container does not store the count (0 when neither is known)."""
    if not (stream.duration and stream.time_base and fps):
        return 0
    return round(float(stream.duration * stream.time_base) * fps)


def _bgr(frame: Any) -> np.ndarray:
    """H x W x 3 uint8 BGR of a decoded frame (see the module docstring for which conversion)."""
    name = frame.format.name
    if name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0 and frame.color_range != 2:
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)  # color_range 2: full (JPEG) range
    if name in ("bgr24", "rgb24"):  # already RGB (e.g. Cinepak, PNG or raw video): exact, no conversion
        image = frame.to_ndarray()
        return np.ascontiguousarray(image[..., ::-1]) if name == "rgb24" else image
    return frame.to_ndarray(format="bgr24")


def _upright(image: np.ndarray, frame: Any) -> np.ndarray:
    """The image turned as the display matrix says (phones store portrait video as rotated landscape)."""
    turn = _UPRIGHT.get(round(getattr(frame, "rotation", 0) or 0) % 360)
    return image if turn is None else cv2.rotate(image, turn)


__all__ = ["BestEffortClock", "OpenCVReader", "PyAVReader", "VideoReader", "import_pyav", "open_video"]
