"""``open_source``: an input URI (source_uri.py) -> the FrameSource that reads it, and how each live scheme opens."""

from __future__ import annotations

import re
from collections.abc import Callable

import cv2

from ..errors import EdgeError
from ..source_uri import csi_pipeline, opencv_has, parse_source_uri, rtsp_pipeline
from .base import Capture, FrameSource
from .files import ImageSequenceSource, VideoFileSource
from .live import LiveSource


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
