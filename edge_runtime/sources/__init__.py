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
(``backoff_s``, doubling, at most 2 s: live_options.py says why) up to ``retries`` times per outage (-1: forever);
each outage is recorded in ``gaps`` as (last frame before, first frame after) in ms, and the run goes on (an outage
still going when the source is closed or gives up ends at that moment). Opening fails fast: a camera that cannot be
opened, or sends nothing within ``stall_timeout_s``, is a one-line EdgeError at once; for rtsp:// it names the cause
(refused, silent, no such path, credentials) from one RTSP DESCRIBE (rtsp_probe.py).

Backends: V4L2 cameras through CAP_V4L2; rtsp:// through FFmpeg (software decode, with ``stall_timeout_s`` as its
open and read timeouts, analyzing 0.5 s of stream to open instead of FFmpeg's 5 s; see open.py), or a decodebin
GStreamer pipeline where OpenCV lacks FFmpeg; hardware decoding on a Jetson is a gst:// pipeline of your own
(rtspsrc ! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv ! ... ! appsink).
csi:// and gst:// need an OpenCV built with GStreamer (JetPack's, not PyPI's): otherwise a one-line EdgeError.

``width``/``height`` resize frames to that size (one of them alone keeps the aspect ratio); cameras are also asked
for it (V4L2 capture properties, the CSI pipeline's caps). Timestamps are milliseconds from the start: the container's
presentation time for video files, index / fps for images, monotonic capture time for live sources.
"""

from __future__ import annotations

from .base import DEFAULT_FPS, Capture, Frame, FrameSource, Size
from .files import ImageSequenceSource, VideoFileSource
from .live import LiveSource
from .open import open_source

__all__ = [
    "DEFAULT_FPS", "Capture", "Frame", "FrameSource", "ImageSequenceSource", "LiveSource", "Size", "VideoFileSource",
    "open_source",
]  # fmt: skip
