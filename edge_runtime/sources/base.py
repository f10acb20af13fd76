"""What every frame source is: ``Frame``, ``Size``, the ``Capture`` protocol OpenCV captures follow, and
``FrameSource``, the base class that iterates, fits frames to the asked size and describes itself."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from ..preprocess import resize_to
from ..source_uri import display

DEFAULT_FPS = 30.0  # reported as fps when a source does not say (image folders, some RTSP servers)


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
