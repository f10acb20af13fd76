"""The two video decoders on the shipped clip and on copies of it made rotated or damaged: PyAV (the default where
installed) and OpenCV's FFmpeg backend (the fallback) agree on frames, times and orientation; PyAV's colour conversion
is OpenCV's cvtColor of the decoded planes, which does not depend on the CPU."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.source_uri import sample_clip
from provq.edge_runtime.sources import open_source, video_readers
from provq.edge_runtime.sources.video_readers import OpenCVReader, PyAVReader

CLIP = str(sample_clip())


def read_all(reader: video_readers.VideoReader) -> tuple[list[np.ndarray], list[float]]:
    images, times = [], []
    try:
        while (item := reader.read()) is not None:
            images.append(item[0])
            times.append(item[1])
    finally:
        reader.release()
    return images, times


def rotated_copy(tmp_path: Path) -> Path:
    """The clip with its track header's display matrix set to a quarter turn (as phones store portrait video)."""
    data = bytearray(Path(CLIP).read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0  # version 0: the matrix follows 24 + 16 bytes of fields (ISO/IEC 14496-12)
    matrix = at + 4 + 24 + 16
    assert struct.unpack(">9i", data[matrix : matrix + 36]) == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    path = tmp_path / "portrait.mp4"
    path.write_bytes(bytes(data))
    return path


def test_pyav_is_the_default_here() -> None:
    reader = video_readers.open_video(CLIP)
    assert isinstance(reader, PyAVReader) and reader.decoder == "PyAV"
    reader.release()


def test_both_decoders_give_the_same_frames_and_times() -> None:
    a, b = PyAVReader(av, CLIP), OpenCVReader(CLIP)
    assert (a.fps, a.count) == (b.fps, b.count) == (25.0, 80)
    (images_a, times_a), (images_b, times_b) = read_all(a), read_all(b)
    assert len(images_a) == len(images_b) == 80 and times_a == times_b
    assert times_a[:3] == [0.0, 40.0, 80.0] and times_a[-1] == 3160.0
    diff = np.abs(np.stack(images_a).astype(np.int16) - np.stack(images_b))
    # the same decoded YUV, two BT.601 conversions that round differently
    assert diff.max() <= 6 and diff.mean() < 1.5


def test_pyav_colours_are_cvtcolor_of_the_decoded_planes() -> None:
    with av.open(CLIP) as container:
        frames = [f for _, f in zip(range(5), container.decode(video=0), strict=False)]
    reader = PyAVReader(av, CLIP)
    for frame in frames:
        assert frame.format.name == "yuv420p"
        expected = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
        assert np.array_equal(reader.read()[0], expected)
    reader.release()


def test_display_matrix_turns_frames_upright_in_both(tmp_path: Path) -> None:
    path = str(rotated_copy(tmp_path))
    plain = OpenCVReader(CLIP).read()[0]
    a, b = PyAVReader(av, path).read()[0], OpenCVReader(path).read()[0]
    assert a.shape == b.shape == (480, 270, 3)
    assert np.array_equal(b, cv2.rotate(plain, cv2.ROTATE_90_CLOCKWISE))
    assert np.abs(a.astype(np.int16) - b).max() <= 6


def test_damaged_packets_are_skipped_and_the_rest_read(tmp_path: Path) -> None:
    data = bytearray(Path(CLIP).read_bytes())
    data[60_000:64_000] = np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes()
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    images, times = read_all(PyAVReader(av, str(path)))
    assert 60 <= len(images) < 80  # the frames of the damaged packets are lost, those after them are not
    assert all(b > a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_non_videos_are_one_line_in_both(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    for make in (lambda p: PyAVReader(av, p), OpenCVReader):
        with pytest.raises(EdgeError, match="cannot open video") as caught:
            make(str(path))
        assert "\n" not in str(caught.value)


def test_without_pyav_files_decode_through_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_readers, "import_pyav", lambda: None)
    fallback = video_readers.open_video(CLIP)
    assert isinstance(fallback, OpenCVReader) and fallback.decoder == "OpenCV"
    fallback.release()
    with open_source("sample://") as source:
        frames = list(source)
    assert len(frames) == 80 and frames[-1].timestamp_ms == 3160
    opencv_images, _ = read_all(OpenCVReader(CLIP))
    assert all(np.array_equal(f.image, image) for f, image in zip(frames, opencv_images, strict=True))


def test_clock_takes_dts_once_pts_run_backwards() -> None:
    """(pts, dts) of the first frames of an MPEG-4 AVI with B-frames (OpenCV's Megamind.avi sample), whose pts
    are in packet order: from the first pts that runs backwards on, the dts are the frames' times."""
    stamps = [(1, 1), (2, 2), (3, 3), (5, 4), (4, 5), (6, 6), (8, 7), (7, 8), (9, None)]
    clock, times = video_readers.BestEffortClock(), []
    clock.observe(*stamps[0])
    for here, ahead in itertools.pairwise([*stamps, None]):
        if ahead is not None:
            clock.observe(*ahead)  # the reader decodes one frame ahead
        times.append(clock.time_of(*here))
    assert times == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # the last frame has no dts: its pts


def test_avi_frame_times_run_to_the_last_frame(tmp_path: Path) -> None:
    images, _ = read_all(PyAVReader(av, CLIP))
    path = tmp_path / "clip.avi"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 480, 270, "yuv420p"
        for image in images[:24]:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    _, times = read_all(PyAVReader(av, str(path)))
    _, opencv_times = read_all(OpenCVReader(str(path)))
    assert times == [40.0 * i for i in range(24)]
    assert opencv_times[:-1] == times[:-1]  # (OpenCV's FFmpeg backend has reported 0 for the flushed last frame)
