"""Sources that drop nothing: video files (OpenCV's FFmpeg backend) and image folders, globs and single images."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from ..errors import EdgeError
from ..source_uri import display, opencv_has
from .base import DEFAULT_FPS, Frame, FrameSource, _sane_fps


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
