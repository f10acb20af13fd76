"""``open_source``: an input URI (source_uri.py) -> the FrameSource that reads it, and how each live scheme opens."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import cv2

from ..errors import EdgeError
from ..live_options import DEFAULT_BACKOFF_S, DEFAULT_LIVE_QUEUE, DEFAULT_RETRIES, DEFAULT_STALL_TIMEOUT_S
from ..rtsp_probe import why_not_open
from ..source_uri import csi_pipeline, opencv_has, parse_source_uri, rtsp_pipeline
from .base import Capture, FrameSource
from .files import ImageSequenceSource, Playback, VideoFileSource
from .live import LiveSource

# FFmpeg's options for every capture it opens (OpenCV reads this variable at each open; a value the user set wins).
# By default FFmpeg analyzes 5 s of an RTSP stream before it opens, which took 2.8 s on 127.0.0.1 and handed the
# frames of those seconds over in one burst; 0.5 s opens in 0.6 s and still finds the size and rate of H.264 streams.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_FFMPEG_OPTIONS = "analyzeduration;500000"
PROBE_TIMEOUT_S = 2.0  # longest wait for each step of the RTSP DESCRIBE that explains a failed open


def open_source(
    uri: str,
    *,
    width: int | None = None,
    height: int | None = None,
    rate: float | None = None,
    loop: int = 0,
    live_queue: int = DEFAULT_LIVE_QUEUE,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
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
        backoff_s: first reconnect delay; it doubles each attempt, up to MAX_BACKOFF_S (2 s).
        stall_timeout_s: a live source that sends no frame for this long is reopened (also the wait for its first).
        realtime: play files at their frame rate instead of as fast as the consumer goes.
    """
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
    spec = parse_source_uri(uri)
    if spec.kind == "video":
        return VideoFileSource(uri, spec.location, Playback(width, height, rate, loop, realtime))
    if spec.kind == "images":
        return ImageSequenceSource(uri, spec.images, Playback(width, height, rate, loop, realtime))
    opener, kind, hint, diagnose = _live_opener(
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
        diagnose=diagnose,
    )


Diagnosis = Callable[[], str | None] | None


def _live_opener(
    kind: str, location: str, *, width: int | None, height: int | None, rate: float | None, stall_timeout_s: float
) -> tuple[Callable[[], Capture], str, str, Diagnosis]:
    """(opener, description, hint when it fails, what says why it does not open) for a camera or stream."""
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

        return open_v4l2, "V4L2 camera", hint, None
    if kind == "rtsp":
        hint = "check the address, the credentials and that the camera is reachable (try it with ffplay)"

        def diagnose() -> str | None:
            return why_not_open(location, min(stall_timeout_s, PROBE_TIMEOUT_S))

        if opencv_has("FFMPEG"):
            os.environ.setdefault(FFMPEG_OPTIONS_ENV, RTSP_FFMPEG_OPTIONS)
            timeout_ms = int(stall_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            opener = lambda: cv2.VideoCapture(location, cv2.CAP_FFMPEG, params)  # noqa: E731
            return opener, "RTSP stream (FFmpeg)", hint, diagnose
        if opencv_has("GStreamer"):
            pipeline = rtsp_pipeline(location)
            return (lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)), "RTSP stream (GStreamer)", hint, diagnose
        raise EdgeError("rtsp:// needs OpenCV built with FFmpeg or GStreamer, and this one has neither")
    if kind == "csi":
        pipeline = csi_pipeline(int(location), width, height, rate)
        hint = "check the ribbon cable and sensor id, and restart the daemon: sudo systemctl restart nvargus-daemon"
        return (lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)), "CSI camera", hint, None
    hint = "test the pipeline with gst-launch-1.0, ending it in fakesink instead of appsink"
    return (lambda: cv2.VideoCapture(location, cv2.CAP_GSTREAMER)), "GStreamer pipeline", hint, None
