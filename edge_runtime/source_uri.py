"""Input URIs, following jetson-utils: what a URI names and whether it is there. No frames are read here.

    sample://                       the clip shipped with provq (80 frames 480x270, 25 fps); sample://images: its photos
    clip.mp4, file://clip.mp4       a video file (OpenCV's FFmpeg backend)
    frames/                         a folder of images (not recursive), in natural order (2.png before 10.png)
    "frames/*.png"                  a glob of images (quote it in the shell), natural order
    photo.jpg                       a single image
    /dev/video0, v4l2:///dev/video0 a V4L2 (USB) camera
    rtsp://user:pass@host:554/path  a network camera
    csi://0                         a MIPI CSI camera on a Jetson (nvarguscamerasrc; needs OpenCV with GStreamer)
    gst://<pipeline> ! appsink      a raw GStreamer pipeline ending in appsink (needs OpenCV with GStreamer)

A bare number (``0``) is refused: jetson-utils reads it as ``csi://0``, OpenCV as ``/dev/video0``; write the one you
mean. Image files: jpg, jpeg, png, bmp, webp, tif, tiff.
"""

from __future__ import annotations

import functools
import glob
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path

import cv2

from .errors import EdgeError
from .formats.media import IMAGE_EXTENSIONS
from .gst_check import parse_problem

SCHEMES = ("file://", "v4l2://", "rtsp://", "rtsps://", "csi://", "gst://", "sample://")
KINDS = ("video", "images", "v4l2", "rtsp", "csi", "gst")  # what a SourceSpec can be

CSI_DEFAULT = (1280, 720, 30.0)  # width, height, rate when csi:// is opened without --input-width/height/rate
GSTREAMER_FIX = (
    "on a Jetson use JetPack's OpenCV (sudo apt install python3-opencv), create the venv with "
    "--system-site-packages and pip uninstall opencv-python-headless"
)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed input URI.

    ``location`` is a file path (video), a device path (v4l2), a URL (rtsp), a sensor id (csi) or a pipeline (gst);
    ``images`` lists the image files of a folder, a glob or a single image, in the order they are read.
    """

    uri: str  # as the user wrote it
    kind: str  # one of KINDS
    location: str = ""
    images: tuple[Path, ...] = field(default=(), repr=False)


def sample_clip() -> Path:
    """The real clip shipped with the package (H.264, 80 frames, 480x270, 25 fps)."""
    return Path(str(resources.files("provq.edge_runtime") / "assets" / "sample" / "clip.mp4"))


@functools.cache
def opencv_has(feature: str) -> bool:
    """Whether this OpenCV was built with a video I/O backend ("GStreamer", "FFMPEG"), from getBuildInformation().

    ``cv2.videoio_registry.getBackends()`` lists GStreamer even on builds without it, so the build text decides.
    """
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip().lower() == feature.lower():
            return value.strip().upper().startswith("YES")
    return False


def require_gstreamer(uri: str) -> None:
    """One-line EdgeError when this OpenCV cannot run GStreamer pipelines (PyPI wheels cannot)."""
    if not opencv_has("GStreamer"):
        raise EdgeError(
            f"{display(uri)} needs OpenCV built with GStreamer, and this one (cv2 {cv2.__version__}) has none: "
            + GSTREAMER_FIX
        )


def csi_pipeline(sensor_id: int, width: int | None, height: int | None, rate: float | None) -> str:
    """The nvarguscamerasrc pipeline for ``csi://N``: H x W x 3 uint8 BGR into an appsink that drops old frames.

    Missing width/height/rate default to 1280x720 at 30 fps (jetson-utils' defaults).
    """
    w = width or CSI_DEFAULT[0]
    h = height or CSI_DEFAULT[1]
    fps = _gst_fraction(rate or CSI_DEFAULT[2])
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={w},height={h},framerate={fps.numerator}/{fps.denominator},format=NV12 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1 sync=false"
    )


def _gst_fraction(rate: float) -> Fraction:
    """A frame rate as GStreamer caps want it; NTSC rates (29.97, 59.94) become 30000/1001, 60000/1001."""
    ntsc = round(rate * 1.001)
    if abs(rate - ntsc / 1.001) < 0.005 and abs(rate - ntsc) > 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(rate).limit_denominator(1000)


def rtsp_pipeline(url: str, latency_ms: int = 200) -> str:
    """A software-decoding GStreamer pipeline for ``rtsp://``, used only when this OpenCV lacks FFmpeg.

    For hardware decoding on a Jetson pass your own ``gst://rtspsrc ... ! nvv4l2decoder ! nvvidconv ! ... ! appsink``.
    """
    return (
        f"rtspsrc location={url} latency={latency_ms} ! decodebin ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1 sync=false"
    )


def parse_source_uri(uri: str) -> SourceSpec:
    """Resolve an input URI and check that what it names exists; a one-line EdgeError otherwise."""
    text = uri.strip()
    if not text:
        raise EdgeError("empty input URI: pass a video file, a folder of images, a glob, /dev/video0, rtsp://, csi://0")
    if text.isdigit():
        raise EdgeError(f"input {text!r} is ambiguous: write csi://{text} (CSI camera) or /dev/video{text} (USB)")
    lower = text.lower()
    for prefix, resolve in _SCHEME_HANDLERS:
        if lower.startswith(prefix):
            return resolve(text, text[len(prefix) :])
    if re.match(r"^[a-z][a-z0-9+.-]*://", lower):
        scheme = lower.split("://", 1)[0]
        raise EdgeError(f"unknown input scheme {scheme}:// in {display(text)}: use {', '.join(SCHEMES)} or a path")
    if text.startswith(("/dev/video", "/dev/v4l/")):
        return _v4l2(text, text)
    return _local(text, text)


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***`` (rtsp://user:***@host), for messages and logs."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]+):[^/@\s]*@", r"\1:***@", uri)


def display(text: str, limit: int = 80) -> str:
    """The URI as it appears in messages: one line, no password, not too long."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _natural_key(path: Path) -> list[int | str]:
    """Sort key that puts frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _sample(text: str, rest: str) -> SourceSpec:
    rest = rest.strip("/")
    clip = sample_clip()
    if rest == "":
        return SourceSpec(text, "video", str(clip))
    if rest == "images":
        return _local(text, str(clip.parent / "images"))
    raise EdgeError(f"unknown sample {rest!r}: use sample:// (the clip) or sample://images (the photos)")


def _local(text: str, location: str) -> SourceSpec:
    """A file, a folder or a glob on disk."""
    path = Path(location).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and _is_image(p)), key=_natural_key)
        if not files:
            raise EdgeError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}): add some or pick another")
        return SourceSpec(text, "images", str(path), tuple(files))
    if path.is_file():
        if _is_image(path):
            return SourceSpec(text, "images", str(path), (path,))
        return SourceSpec(text, "video", str(path))
    if re.search(r"[*?[]", location):
        matches = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        if not matches:
            raise EdgeError(f"glob {location} matches no files: check the pattern, and quote it for the shell")
        files = sorted((p for p in matches if _is_image(p)), key=_natural_key)
        if not files:
            kinds = ", ".join(IMAGE_EXTENSIONS)
            raise EdgeError(f"glob {location} matches {len(matches)} files, none an image ({kinds}): narrow it")
        return SourceSpec(text, "images", location, tuple(files))
    raise EdgeError(f"input {location} does not exist: pass a video file, a folder of images, a glob or a camera URI")


def _v4l2(text: str, device: str) -> SourceSpec:
    if not Path(device).exists():
        present = sorted(glob.glob("/dev/video*"), key=lambda p: _natural_key(Path(p)))
        found = f"cameras here: {', '.join(present)}" if present else "no /dev/video* devices here"
        raise EdgeError(f"camera {device} not found ({found}): check the cable and `v4l2-ctl --list-devices`")
    return SourceSpec(text, "v4l2", device)


def _csi(text: str, sensor: str) -> SourceSpec:
    sensor = sensor.strip("/")
    if not sensor.isdigit():
        raise EdgeError(f"bad CSI camera {display(text)}: write csi://0, csi://1, ... (the sensor id)")
    require_gstreamer(text)
    return SourceSpec(text, "csi", sensor)


def _gst(text: str, pipeline: str) -> SourceSpec:
    pipeline = pipeline.strip()
    if not pipeline:
        raise EdgeError("empty gst:// pipeline: write gst://<source> ! ... ! appsink")
    require_gstreamer("gst://")
    last = pipeline.rsplit("!", 1)[-1].split()
    if not last or last[0] != "appsink":
        raise EdgeError("gst:// pipeline must end in appsink: append ' ! appsink drop=1 max-buffers=1 sync=false'")
    problem = parse_problem(pipeline)
    if problem is not None:
        raise EdgeError(
            f"gst:// pipeline does not parse ({problem}): fix it, gst-inspect-1.0 lists the elements installed and "
            "gst-launch-1.0 tests a pipeline (end it in fakesink)"
        )
    return SourceSpec(text, "gst", pipeline)


def _rtsp(text: str, _rest: str) -> SourceSpec:
    return SourceSpec(text, "rtsp", text)


_SCHEME_HANDLERS: tuple[tuple[str, Callable[[str, str], SourceSpec]], ...] = (
    ("sample://", _sample),
    ("file://", _local),
    ("v4l2://", _v4l2),
    ("rtsp://", _rtsp),
    ("rtsps://", _rtsp),
    ("csi://", _csi),
    ("gst://", _gst),
)
