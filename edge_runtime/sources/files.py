"""Sources that drop nothing: video files (sources.video_readers: PyAV, else OpenCV) and image folders, globs and
single images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import EdgeError
from ..source_uri import display
from .base import DEFAULT_FPS, Frame, FrameSource
from .video_readers import open_video


@dataclass(frozen=True)
class Playback:
    """How a file or folder is played (open_source checks the values)."""

    width: int | None = None  # frames resized to this width (alone: the aspect ratio kept)
    height: int | None = None
    rate: float | None = None  # re-times fps and timestamps to this rate, without pacing; None: the file's own
    loop: int = 0  # extra passes over the file or folder; -1: forever
    realtime: bool = False  # hand frames over at their timestamps instead of as fast as they are taken


class _FileSource(FrameSource):
    """What video files and image sequences share: the first frame read when opening (so a bad file fails at once),
    the size, rate and count it gives, loop passes and realtime pacing."""

    def __init__(self, uri: str, playback: Playback) -> None:
        super().__init__(uri, playback.width, playback.height)
        self._playback = playback
        self._passes_left = playback.loop
        self._pacer = _Pacer() if playback.realtime else None
        self._index = 0  # frames handed over

    def _opened(self, first: np.ndarray, fps: float | None, frames_per_pass: int) -> None:
        """Set ``fps`` (the asked rate, else ``fps``, else DEFAULT_FPS), ``size`` (the first frame's, fitted) and
        ``total`` (None when the count is unknown or the loop endless)."""
        loop = self._playback.loop
        self.fps = float(self._playback.rate or fps or DEFAULT_FPS)
        self.size = self._fitted_size(first)
        self.total = frames_per_pass * (loop + 1) if frames_per_pass > 0 and loop >= 0 else None

    def _another_pass(self) -> bool:
        """Count one more loop pass; False when none are left."""
        if self._passes_left == 0:
            return False
        if self._passes_left > 0:
            self._passes_left -= 1
        return True

    def _hand_over(self, image: np.ndarray, timestamp_ms: float) -> Frame:
        """The next Frame, fitted, once its time has come when playing in realtime."""
        frame = Frame(self._index, timestamp_ms, self._fit(image))
        self._index += 1
        if self._pacer is not None:
            self._pacer.wait(timestamp_ms)
        return frame


class VideoFileSource(_FileSource):
    """A video file read by video_readers.open_video (PyAV where installed, else OpenCV's FFmpeg backend). Frames are
    H x W x 3 uint8 BGR."""

    kind = "video file"

    def __init__(self, uri: str, path: str, playback: Playback) -> None:
        super().__init__(uri, playback)
        self._path = path
        self._reader = open_video(path)
        try:
            first = self._reader.read()
            if first is None:
                raise EdgeError(
                    f"no frame could be decoded from {path}: the file is truncated or corrupt, or its codec is not in "
                    f"this {self._reader.decoder} build (re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4)"
                )
        except BaseException:
            self._reader.release()
            raise
        image, first_pos = first
        self._retimed = playback.rate is not None
        self._opened(image, self._reader.fps, self._reader.count)
        self._pending: tuple[np.ndarray, float] | None = (image, first_pos)
        self._in_pass = 0  # frames handed over in this pass
        self._pass_offset_ms = 0.0
        self._last_ms = -1.0  # timestamp of the last frame within this pass
        self._last_ts = 0.0

    def _next_frame(self) -> Frame | None:
        if self._pending is not None:
            (image, pos_ms), self._pending = self._pending, None
        else:
            item = self._reader.read()
            if item is None:
                if not self._start_next_pass():
                    return None
                item = self._reader.read()
                if item is None:
                    return None
            image, pos_ms = item
        period = 1000.0 / self.fps
        in_pass_ms = self._in_pass * period
        if not self._retimed and np.isfinite(pos_ms) and pos_ms >= 0 and pos_ms > self._last_ms:
            in_pass_ms = pos_ms  # the container's presentation time
        elif self._in_pass > 0:
            in_pass_ms = max(in_pass_ms, self._last_ms + period)
        self._last_ms = in_pass_ms
        timestamp = self._pass_offset_ms + in_pass_ms
        self._in_pass += 1
        self._last_ts = timestamp
        return self._hand_over(image, timestamp)

    def _start_next_pass(self) -> bool:
        """Reopen the file for the next loop pass; False when no passes are left."""
        if not self._another_pass():
            return False
        self._reader.release()
        self._reader = open_video(self._path)
        self._pass_offset_ms = self._last_ts + 1000.0 / self.fps
        self._in_pass = 0
        self._last_ms = -1.0
        return True

    def _release(self) -> None:
        self._reader.release()


class ImageSequenceSource(_FileSource):
    """Image files (a folder, a glob or one file) read as stored: cv2.IMREAD_UNCHANGED keeps gray, BGRA and uint16."""

    kind = "images"

    def __init__(self, uri: str, files: tuple[Path, ...], playback: Playback) -> None:
        super().__init__(uri, playback)
        if not files:
            raise EdgeError(f"{display(uri)} names no images: pass a folder, a glob or image files")
        self._files = files
        first = self._load(files[0])
        self._opened(first, None, len(files))
        self._pending: np.ndarray | None = first

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise EdgeError(f"cannot read image {path}: it is corrupt or not an image; replace or remove it")
        return image

    def _next_frame(self) -> Frame | None:
        position = self._index % len(self._files)
        if position == 0 and self._index > 0 and not self._another_pass():
            return None
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            image = self._load(self._files[position])
        return self._hand_over(image, self._index * 1000.0 / self.fps)

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
