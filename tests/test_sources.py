"""Frame sources on real data: the shipped clip and photos, PNG folders made from them, and a camera-device double.

Live behaviour (drops, stalls, disconnects, backoff) is driven by ClipCameraDevice: a test double of a camera
*device* whose frames come from the real sample clip through a real cv2.VideoCapture, and which can be told to be slow,
to stall or to drop the connection. OpenCV itself is not faked.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.preprocess import to_bgr_uint8
from provq.edge_runtime.source_uri import csi_pipeline, opencv_has, parse_source_uri, redact, sample_clip
from provq.edge_runtime.sources import Frame, LiveSource, Size, open_source

CLIP = sample_clip()
IMAGES = CLIP.parent / "images"
NO_GSTREAMER = pytest.mark.skipif(opencv_has("GStreamer"), reason="this OpenCV has GStreamer")


def _one_line_error(uri: str, **options: object) -> str:
    with pytest.raises(EdgeError) as caught:
        source = open_source(uri, **options)
        try:
            list(source)
        finally:
            source.close()
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def _monotone(frames: list[Frame]) -> bool:
    return all(b.timestamp_ms > a.timestamp_ms and b.index > a.index for a, b in itertools.pairwise(frames))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gray, BGRA and 16-bit PNGs made from the sample photos, named so that natural order differs from text order."""
    folder = tmp_path_factory.mktemp("pngs")
    photo = cv2.resize(cv2.imread(str(IMAGES / "chelsea.jpg")), (160, 106), interpolation=cv2.INTER_AREA)
    rocket = cv2.resize(cv2.imread(str(IMAGES / "rocket.jpg")), (160, 107), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "img1.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    alpha = np.full(photo.shape[:2], 200, np.uint8)
    cv2.imwrite(str(folder / "img2.png"), np.dstack([photo, alpha]))
    cv2.imwrite(str(folder / "img10.png"), rocket.astype(np.uint16) * 257)
    (folder / "notes.txt").write_text("not an image")
    return folder


# files and folders


def test_sample_clip_has_80_frames_with_container_timestamps() -> None:
    with open_source("sample://") as source:
        assert not source.live and source.fps == 25 and source.size == Size(480, 270) and source.total == 80
        frames = list(source)
        assert "480x270" in source.describe() and source.dropped == 0 and source.gaps == []
    assert len(frames) == 80 and [f.index for f in frames] == list(range(80))
    assert all(f.image.shape == (270, 480, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].timestamp_ms == 0 and frames[1].timestamp_ms == 40 and frames[-1].timestamp_ms == 3160
    assert _monotone(frames)


def test_file_uri_plain_path_and_sample_read_the_same_frames() -> None:
    heads = []
    for uri in ("sample://", str(CLIP), f"file://{CLIP}"):
        with open_source(uri) as source:
            heads.append(next(source).image)
    assert all(np.array_equal(heads[0], other) for other in heads[1:])


def test_loop_once_plays_twice_with_running_timestamps() -> None:
    with open_source("sample://", loop=1) as source:
        assert source.total == 160
        frames = list(source)
    assert len(frames) == 160 and _monotone(frames)
    assert frames[80].timestamp_ms == pytest.approx(3200) and np.array_equal(frames[80].image, frames[0].image)


def test_loop_forever_keeps_going() -> None:
    with open_source("sample://images", loop=-1) as source:
        assert source.total is None
        frames = list(itertools.islice(source, 30))
    assert len(frames) == 30 and _monotone(frames)


def test_width_height_resize_and_one_side_keeps_aspect() -> None:
    with open_source("sample://", width=240, height=100) as source:
        assert source.size == Size(240, 100) and next(source).image.shape == (100, 240, 3)
    with open_source("sample://", width=240) as source:
        assert source.size == Size(240, 135) and next(source).image.shape == (135, 240, 3)
    with open_source("sample://images", height=64) as source:
        for frame in source:
            h, w = frame.image.shape[:2]
            assert h == 64 and w > 0


def test_rate_retimes_files_without_pacing() -> None:
    start = time.monotonic()
    with open_source("sample://", rate=10) as source:
        frames = list(source)
        assert source.fps == 10
    assert time.monotonic() - start < 4  # 8 s of stream time at 10 fps, delivered as fast as decoded
    assert [f.timestamp_ms for f in frames[:3]] == [0, 100, 200] and frames[-1].timestamp_ms == pytest.approx(7900)


def test_realtime_paces_files_to_their_timestamps() -> None:
    start = time.monotonic()
    with open_source("sample://images", rate=50, realtime=True) as source:
        frames = list(source)
    assert len(frames) == 9 and time.monotonic() - start >= 0.15  # 8 intervals of 20 ms


def test_sample_images_are_read_in_order_as_stored() -> None:
    paths = sorted(IMAGES.glob("*.jpg"))
    with open_source(str(IMAGES)) as source:
        frames = list(source)
        assert source.fps == 30 and source.total == len(paths)
    assert len(frames) == len(paths) == 9
    for frame, path in zip(frames, paths, strict=True):
        assert np.array_equal(frame.image, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    assert [f.timestamp_ms for f in frames[:2]] == [0, pytest.approx(1000 / 30)]


def test_folder_hands_over_gray_bgra_and_16bit_as_stored(png_dir: Path) -> None:
    with open_source(str(png_dir)) as source:
        gray, bgra, deep = (f.image for f in source)
    assert gray.shape == (106, 160) and gray.dtype == np.uint8
    assert bgra.shape == (106, 160, 4) and bgra.dtype == np.uint8 and (bgra[..., 3] == 200).all()
    assert deep.shape == (107, 160, 3) and deep.dtype == np.uint16 and deep.max() > 255
    for image in (gray, bgra, deep):
        assert to_bgr_uint8(image).shape[2] == 3
    with open_source(str(png_dir), width=80, height=50) as source:
        small = [f.image for f in source]
    assert [(i.shape, i.dtype) for i in small] == [
        ((50, 80), np.uint8),
        ((50, 80, 4), np.uint8),
        ((50, 80, 3), np.uint16),
    ]


def test_glob_in_natural_order(png_dir: Path) -> None:
    assert [p.name for p in parse_source_uri(str(png_dir / "*.png")).images] == ["img1.png", "img2.png", "img10.png"]
    assert [p.name for p in parse_source_uri(str(png_dir / "img1*")).images] == ["img1.png", "img10.png"]
    with open_source(str(png_dir / "*.png")) as source:
        assert len(list(source)) == 3


def test_single_image_file() -> None:
    with open_source(str(IMAGES / "rocket.jpg")) as source:
        frames = list(source)
    assert len(frames) == 1 and np.array_equal(frames[0].image, cv2.imread(str(IMAGES / "rocket.jpg")))


# one clear line for each thing that cannot be used


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "truncated.mp4").write_bytes(CLIP.read_bytes()[:3000])
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes((IMAGES / "rocket.jpg").read_bytes())
    (tmp_path / "broken" / "b.jpg").write_bytes(b"not a jpeg at all")
    cases = {
        str(tmp_path / "empty"): "holds no images",
        str(tmp_path / "missing.mp4"): "does not exist",
        "foo://bar": "unknown input scheme foo://",
        "rtp://@:1234": "unknown input scheme rtp://",
        str(tmp_path / "*.png"): "matches no files",
        str(tmp_path / "*.mp4"): "none an image",
        str(tmp_path / "truncated.mp4"): "cannot open video",
        str(tmp_path / "noise.mp4"): "cannot open video",
        str(tmp_path / "broken"): "cannot read image",
        "/dev/video9": "camera /dev/video9 not found",
        "v4l2:///dev/video9": "camera /dev/video9 not found",
        "0": "ambiguous",
        "sample://nope": "unknown sample",
        "csi://front": "sensor id",
    }
    for uri, fragment in cases.items():
        assert fragment in _one_line_error(uri), uri


def test_bad_options_are_one_line() -> None:
    for options, fragment in (
        ({"width": 0}, "--input-width"),
        ({"rate": -5.0}, "--input-rate"),
        ({"loop": -2}, "--input-loop"),
        ({"live_queue": 0}, "--live-queue"),
        ({"retries": -3}, "--retries"),
    ):
        assert fragment in _one_line_error("sample://", **options)


@NO_GSTREAMER
@pytest.mark.parametrize("uri", ["csi://0", "gst://videotestsrc num-buffers=3 ! videoconvert ! appsink"])
def test_gstreamer_inputs_say_how_to_get_gstreamer(uri: str) -> None:
    message = _one_line_error(uri)
    assert "needs OpenCV built with GStreamer" in message
    assert "python3-opencv" in message and "--system-site-packages" in message


def test_csi_pipeline_asks_the_sensor_for_size_and_rate() -> None:
    default = csi_pipeline(0, None, None, None)
    assert "sensor-id=0" in default and "width=1280,height=720,framerate=30/1" in default
    assert default.endswith("appsink drop=1 max-buffers=1 sync=false")
    assert "width=640,height=480,framerate=30000/1001" in csi_pipeline(1, 640, 480, 29.97)


def test_unreachable_rtsp_camera_is_one_line() -> None:
    message = _one_line_error("rtsp://admin:s3cret@127.0.0.1:1/live", stall_timeout_s=2.0)  # a closed local port
    assert "cannot open rtsp://admin:***@127.0.0.1:1/live" in message


def test_passwords_stay_out_of_messages() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.2:554/live") == "rtsp://admin:***@10.0.0.2:554/live"
    assert "s3cret" not in _one_line_error("rtspx://admin:s3cret@10.0.0.2/live")


# live sources, driven by a camera-device double


@dataclass
class Connection:
    """How one connection of the camera-device double behaves."""

    opens: bool = True  # False: the device refuses this connection
    fail_after: int | None = None  # read() fails (disconnect) after this many frames
    stall_after: int | None = None  # read() blocks for stall_s once after this many frames
    stall_s: float = 0.0


class ClipCameraDevice:
    """Test double of a camera device: every connection streams the real sample clip (decoded by a real
    cv2.VideoCapture, looping like an endless camera) at ``fps``, following the script of connections; the last
    entry repeats. Use ``device.open`` as a LiveSource opener."""

    def __init__(self, *script: Connection, fps: float = 100.0) -> None:
        self.script = list(script) or [Connection()]
        self.fps = fps
        self.connections: list[ClipCameraConnection] = []

    def open(self) -> ClipCameraConnection:
        plan = self.script[min(len(self.connections), len(self.script) - 1)]
        connection = ClipCameraConnection(plan, self.fps)
        self.connections.append(connection)
        return connection

    def source(self, **options: object) -> LiveSource:
        options = {"retries": 3, "backoff_s": 0.01, "stall_timeout_s": 1.0} | options
        return LiveSource("test://clip-camera", self.open, kind="clip camera double", **options)


class ClipCameraConnection:
    """One open connection of ClipCameraDevice; follows cv2.VideoCapture's read/get/isOpened/release."""

    def __init__(self, plan: Connection, fps: float) -> None:
        self.plan = plan
        self.fps = fps
        self.frames = 0
        self.released = False
        self._stalled = False
        self._next_due = time.monotonic()
        self._cap = cv2.VideoCapture(str(CLIP), cv2.CAP_FFMPEG) if plan.opens else None

    def isOpened(self) -> bool:
        return self._cap is not None and self._cap.isOpened()

    def get(self, prop_id: int) -> float:
        return self.fps if prop_id == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        assert self._cap is not None and not self.released
        plan = self.plan
        if plan.fail_after is not None and self.frames >= plan.fail_after:
            return False, None
        if plan.stall_after is not None and self.frames >= plan.stall_after and not self._stalled:
            self._stalled = True
            time.sleep(plan.stall_s)
            self._next_due = time.monotonic()
        ok, image = self._cap.read()
        if not ok:  # end of the clip: a camera goes on
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        self._next_due += 1.0 / self.fps
        time.sleep(max(0.0, self._next_due - time.monotonic()))
        self.frames += 1
        return ok, image

    def release(self) -> None:
        self.released = True
        if self._cap is not None:
            self._cap.release()


def _all_released(device: ClipCameraDevice) -> bool:
    return all(c.released for c in device.connections)


def test_slow_consumer_drops_oldest_and_counts_them() -> None:
    threads = threading.active_count()
    device = ClipCameraDevice(fps=200)
    with device.source() as source:
        assert source.live and source.fps == 200 and source.size == Size(480, 270)
        frames = []
        for frame in itertools.islice(source, 12):
            frames.append(frame)
            time.sleep(0.03)  # ~6 camera frames per consumed one
        dropped = source.dropped
    assert dropped > 0 and _monotone(frames) and frames[0].image.shape == (270, 480, 3)
    holes = sum(b.index - a.index - 1 for a, b in itertools.pairwise(frames))
    assert 0 < holes <= dropped
    assert _all_released(device) and threading.active_count() == threads


def test_ring_keeps_the_newest_frames() -> None:
    device = ClipCameraDevice(Connection(fail_after=40), fps=400)  # 40 frames, then the connection drops
    with device.source(live_queue=3, retries=0) as source:
        first = next(source)
        while not device.connections[0].released:  # the capture thread saw the drop and let go
            time.sleep(0.01)
        frames = [next(source) for _ in range(3)]
        assert [f.index for f in frames] == [37, 38, 39]  # the newest three captures
        assert first.index < 37 and source.dropped == 36  # every other capture was overwritten
        with pytest.raises(EdgeError, match="0 reconnect attempts"):
            next(source)


def test_disconnect_is_retried_recorded_as_gap_and_frames_continue() -> None:
    threads = threading.active_count()
    device = ClipCameraDevice(Connection(fail_after=10), Connection())
    with device.source(width=240, height=135, live_queue=64) as source:  # a queue long enough to drop nothing
        frames = list(itertools.islice(source, 25))
        gaps = list(source.gaps)
        assert source.dropped == 0
    assert [f.index for f in frames] == list(range(25)) and _monotone(frames)
    assert frames[-1].image.shape == (135, 240, 3) and source.size == Size(240, 135)
    assert len(device.connections) == 2 and gaps == [(frames[9].timestamp_ms, frames[10].timestamp_ms)]
    assert _all_released(device) and threading.active_count() == threads


def test_stall_is_detected_reopened_and_recorded() -> None:
    threads = threading.active_count()
    device = ClipCameraDevice(Connection(stall_after=5, stall_s=0.6), Connection())
    with device.source(stall_timeout_s=0.15, live_queue=64) as source:
        frames = list(itertools.islice(source, 15))
        gaps = list(source.gaps)
    assert len(frames) == 15 and _monotone(frames) and len(device.connections) == 2
    assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] >= 150
    assert _all_released(device) and threading.active_count() == threads


def test_reconnect_backs_off_exponentially() -> None:
    refused = Connection(opens=False)
    device = ClipCameraDevice(Connection(fail_after=5), refused, refused, Connection())
    with device.source(backoff_s=0.05) as source:
        frames = list(itertools.islice(source, 10))
        (lost, back), *others = source.gaps
    assert len(frames) == 10 and not others and len(device.connections) == 4
    assert back - lost >= (0.05 + 0.10 + 0.20) * 1000 * 0.95  # three waits: 50, 100, 200 ms


def test_exhausted_retries_end_with_one_clear_line() -> None:
    threads = threading.active_count()
    device = ClipCameraDevice(Connection(fail_after=5), Connection(opens=False))
    source = device.source(retries=2, backoff_s=0.01, live_queue=64)
    frames = []
    with pytest.raises(EdgeError) as caught:
        frames.extend(source)
    message = str(caught.value)
    assert "\n" not in message and "2 reconnect attempts" in message and "--retries -1" in message
    assert len(frames) == 5 and len(source.gaps) == 1 and source.closed
    assert len(device.connections) == 3 and _all_released(device) and threading.active_count() == threads


def test_camera_that_cannot_open_or_sends_nothing_fails_at_once() -> None:
    threads = threading.active_count()
    with pytest.raises(EdgeError, match="cannot open test://clip-camera"):
        ClipCameraDevice(Connection(opens=False)).source()
    device = ClipCameraDevice(Connection(fail_after=0))
    with pytest.raises(EdgeError, match="opened but its first read failed"):
        device.source()
    assert _all_released(device) and threading.active_count() == threads


def test_close_from_another_thread_ends_iteration() -> None:
    threads = threading.active_count()
    source = ClipCameraDevice(fps=50).source()
    closer = threading.Timer(0.2, source.close)
    closer.start()
    count = sum(1 for _ in source)
    closer.join()
    assert 1 <= count <= 30 and source.closed and threading.active_count() == threads


def test_no_file_descriptor_leaks_over_50_cycles(png_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(CLIP.read_bytes()[:3000])

    def cycle() -> None:
        with open_source("sample://") as source:
            next(source)
        with open_source(str(png_dir / "*.png")) as source:
            next(source)
        with pytest.raises(EdgeError):
            open_source(str(broken))
        with ClipCameraDevice().source() as source:
            next(source)

    cycle()  # warm up lazily opened library handles
    before = _open_fds()
    threads = threading.active_count()
    for _ in range(50):
        cycle()
    assert _open_fds() == before and threading.active_count() == threads
