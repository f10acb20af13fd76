"""Where reconstructed frames go: a video file, numbered images, or a window. Frames are H x W x 3 uint8 BGR.

    out.mp4 | out.avi | out.mkv     cv2.VideoWriter: mp4v (MPEG-4 Part 2), MJPG, FFV1 (lossless) respectively
    frames/%06d.png                 one image per frame, numbered 0, 1, 2, ... through a printf pattern (png, jpg,
                                    bmp, tif, webp); the folder is created at the first frame
    frames/ (or a name without an extension)   the same as frames/%06d.png
    display://0                     an OpenCV window; needs OpenCV with a GUI backend and a display

Files are written so that a crash never leaves a half-written file under the final name: a video goes to a hidden
``.NAME.PID.partial.EXT`` beside it and is fsynced and renamed over OUTPUT only when ``close(ok=True)``
(``formats.files.replace_durably``); after a kill the partial file may stay, but an existing OUTPUT is untouched.
Each image is written to a hidden temporary name and renamed (``write_bytes_atomic``). ``close(ok=False)`` (a
failed run) removes the partial video.

    output = open_output("out.mp4", fps=25.0)   # validated now (EdgeError), opened at the first frame
    output.write(frame_bgr)                     # the first frame fixes the video size
    output.close(ok=True)
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import cv2
import numpy as np

from .errors import EdgeError
from .formats.files import replace_durably, write_bytes_atomic
from .formats.media import IMAGE_EXTENSIONS

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}  # extension -> fourcc
DEFAULT_PATTERN = "%06d.png"  # inside a folder output
DEFAULT_FPS = 30.0  # for a video when the source does not say
_PRINTF_INT = re.compile(r"%0?\d*d")
_VIDEO_MAGIC = (  # (offset, bytes) that start a container OpenCV writes; any one identifies a video file
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"RIFF"),
    (0, b"\x1a\x45\xdf\xa3"),
)


class Output:
    """A sink of reconstructed frames. ``frames`` counts what was written."""

    uri: str
    frames: int = 0

    def write(self, image: np.ndarray) -> None:
        """Add one H x W x 3 uint8 BGR frame."""
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        """Finish (ok) or abandon (not ok) the output; safe to call twice."""

    def describe(self) -> str:
        return self.uri


class VideoOutput(Output):
    """A video file through cv2.VideoWriter, written to a partial name and renamed on a clean close."""

    def __init__(self, path: Path, fps: float) -> None:
        self.uri = str(path)
        self.path = path
        self.fps = fps if fps > 0 else DEFAULT_FPS
        self.fourcc = VIDEO_CODECS[path.suffix.lower()]
        self.partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # width, height
        _check_parent(path, "OUTPUT")
        if path.is_dir():
            raise EdgeError(f"OUTPUT {path} is a folder: name a video file, or write frames as {path}/%06d.png")
        if path.is_file() and path.stat().st_size > 0 and not _looks_like_video(path):
            raise EdgeError(f"OUTPUT {path} exists and is not a video: refusing to overwrite it; remove it or rename")

    def write(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(
                str(self.partial), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (width, height)
            )
            if not self._writer.isOpened():
                self._writer = None
                raise EdgeError(
                    f"OpenCV cannot write {self.path.suffix} video ({self.fourcc}) here: try out.avi (MJPG), out.mkv "
                    "(FFV1) or frames/%06d.png"
                )
            self._size = (width, height)
        elif (width, height) != self._size:
            raise EdgeError(
                f"frame {self.frames} is {width}x{height}, the video {self.path} is {self._size[0]}x"
                f"{self._size[1]}: a video holds one frame size"
            )
        self._writer.write(image)
        self.frames += 1

    def close(self, ok: bool = True) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:
            if ok:
                replace_durably(self.partial, self.path)
        finally:
            self.partial.unlink(missing_ok=True)  # abandoned, or a failed rename: never left half-written

    def describe(self) -> str:
        return f"{self.path} ({self.fourcc}, {self.fps:g} fps)"


class ImageOutput(Output):
    """Numbered images through a printf pattern (``frames/%06d.png``); each written to a temporary name, renamed."""

    def __init__(self, pattern: Path) -> None:
        self.uri = str(pattern)
        self.pattern = pattern
        self.extension = pattern.suffix.lower()
        if len(_PRINTF_INT.findall(pattern.name)) != 1 or "%" in _PRINTF_INT.sub("", pattern.name):
            raise EdgeError(f"OUTPUT pattern {pattern.name!r} needs exactly one frame number such as %06d")
        if pattern.parent.exists() and not pattern.parent.is_dir():
            raise EdgeError(f"OUTPUT folder {pattern.parent} exists and is not a folder: pick another name")
        self._made_folder = False

    def write(self, image: np.ndarray) -> None:
        if not self._made_folder:
            try:
                self.pattern.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise EdgeError(f"cannot create OUTPUT folder {self.pattern.parent}: {err.strerror}") from None
            self._made_folder = True
        ok, data = cv2.imencode(self.extension, image)
        if not ok:
            raise EdgeError(f"OpenCV cannot encode {self.extension} images: pick .png or .jpg")
        path = self.pattern.with_name(self.pattern.name % self.frames)
        try:
            write_bytes_atomic(path, data.tobytes())
        except OSError as err:
            raise EdgeError(f"cannot write {path}: {err.strerror}") from None
        self.frames += 1


class DisplayOutput(Output):
    """An OpenCV window. ``write`` (any thread) keeps the newest frame; ``pump`` (the main thread) shows it.

    GUI toolkits want their calls on one thread, the main one, so the pipeline's writer thread only hands frames
    over and the main thread's wait loop calls ``pump``. Closing the window or pressing q / Esc asks to stop.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.title = f"provq {uri}"
        self._cond = threading.Condition()
        self._latest: np.ndarray | None = None
        self._shown = False

    def write(self, image: np.ndarray) -> None:
        with self._cond:
            self._latest = image
            self.frames += 1
            self._cond.notify()

    def pump(self, timeout_s: float) -> bool:
        """Show the newest frame, waiting up to ``timeout_s`` for one; False once the user closed the window."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None, timeout=timeout_s)
            image, self._latest = self._latest, None
        if image is not None:
            cv2.imshow(self.title, image)
            self._shown = True
        if not self._shown:
            return True
        key = cv2.waitKey(1) & 0xFF
        return key not in (27, ord("q")) and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self, ok: bool = True) -> None:
        if self._shown:
            cv2.destroyWindow(self.title)
            self._shown = False


def gui_backend() -> str | None:
    """OpenCV's GUI backend ("GTK3", "QT5", ...) from its build information; None for headless builds."""
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip() == "GUI":
            value = value.strip()
            return None if value.upper() in ("", "NONE", "NO") else value
    return None


def open_output(uri: str, fps: float) -> Output:
    """Check an OUTPUT and return its (not yet opened) sink; a one-line EdgeError when it cannot be written."""
    text = uri.strip()
    if text.lower().startswith("display://"):
        return _display(text)
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise EdgeError(
            f"unsupported OUTPUT {text}: write file.mp4|.avi|.mkv, folder/%06d.png, a folder or display://0"
        )
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if "%" in path.name:
        if suffix not in IMAGE_EXTENSIONS:
            raise EdgeError(f"OUTPUT pattern {path.name!r} must end in an image type: {', '.join(IMAGE_EXTENSIONS)}")
        return ImageOutput(path)
    if suffix in VIDEO_CODECS:
        return VideoOutput(path, fps)
    if path.is_dir() or text.endswith(("/", os.sep)) or not suffix:
        if path.exists() and not path.is_dir():
            raise EdgeError(f"OUTPUT {path} exists and is not a folder: name a video (.mp4) or frames/%06d.png")
        return ImageOutput(path / DEFAULT_PATTERN)
    if suffix in IMAGE_EXTENSIONS:
        raise EdgeError(f"OUTPUT {path} names one image: write the frames as {path.with_suffix('')}/%06d{suffix}")
    raise EdgeError(
        f"unknown OUTPUT type {suffix!r}: write file.mp4|.avi|.mkv, folder/%06d.png, a folder or display://0"
    )


def _display(uri: str) -> DisplayOutput:
    backend = gui_backend()
    if backend is None:
        raise EdgeError(
            f"{uri} needs OpenCV with a GUI backend, and this one (cv2 {cv2.__version__}, headless) has none: pass "
            "--headless, or write to a file (out.mp4, frames/%06d.png)"
        )
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise EdgeError(f"{uri} needs a display and DISPLAY is not set: pass --headless, or write to a file (out.mp4)")
    return DisplayOutput(uri)


def _check_parent(path: Path, what: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise EdgeError(f"{what} folder {parent} does not exist: create it first, or write somewhere else")


def _looks_like_video(path: Path) -> bool:
    """Whether a file starts like an MP4/MOV, AVI or Matroska container."""
    with open(path, "rb") as f:
        head = f.read(12)
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _VIDEO_MAGIC)


def check_writable_file(path: Path, what: str) -> None:
    """For --tokens and --json: the folder must exist and the name must not be a folder."""
    _check_parent(path, what)
    if path.is_dir():
        raise EdgeError(f"{what} {path} is a folder: name a file")
