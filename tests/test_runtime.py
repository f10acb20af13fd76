"""The streaming pipeline and its outputs, in-process, on the shipped sample clip (mostly shrunk to 160 px wide).

A live camera is played by ClipCameraDevice from test_sources (the real clip through a real cv2.VideoCapture, paced
like a camera, told when to drop its connection). The backend is the shipped default model on ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_sources import ClipCameraDevice, Connection

from provq.edge_runtime import pipeline as pipeline_module
from provq.edge_runtime import token_sink
from provq.edge_runtime.backends import Backend, cpu_session, open_backend
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import default_model_dir
from provq.edge_runtime.outputs import ImageOutput, VideoOutput, gui_backend, open_output
from provq.edge_runtime.pipeline import Pipeline, PipelineConfig
from provq.edge_runtime.sources import LiveSource, open_source
from provq.edge_runtime.tokenstream import Frame, Gap, TokenStreamReader, stream_stats

SMALL = 160  # frame width for fast runs: the clip becomes 160 x 90


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = open_backend("default", "onnxruntime", "fp32")
    yield b
    b.close()


def _clip_frames(n: int, width: int = SMALL) -> list[np.ndarray]:
    with open_source("sample://", width=width) as source:
        return [frame.image for _, frame in zip(range(n), source, strict=False)]


def _read_all(path: Path) -> tuple[list[Frame | Gap], TokenStreamReader]:
    with TokenStreamReader(path) as reader:
        items = list(reader)
    return items, reader


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("provq-")]


# outputs


def test_open_output_kinds_and_one_line_refusals(tmp_path: Path) -> None:
    assert isinstance(open_output(str(tmp_path / "a.mp4"), 25), VideoOutput)
    assert open_output(str(tmp_path / "b.mkv"), 25).fourcc == "FFV1"
    assert open_output(f"file://{tmp_path}/c.avi", 25).fourcc == "MJPG"
    pattern = open_output(str(tmp_path / "f" / "%06d.png"), 25)
    assert isinstance(pattern, ImageOutput) and not (tmp_path / "f").exists()  # created at the first frame
    assert open_output(str(tmp_path / "folder"), 25).pattern == tmp_path / "folder" / "%06d.png"
    (tmp_path / "notes.mp4").write_text("my notes")
    refusals = {
        str(tmp_path / "notes.mp4"): "is not a video",
        str(tmp_path / "missing" / "a.mp4"): "does not exist",
        str(tmp_path / "a.txt"): "unknown OUTPUT type",
        str(tmp_path / "one.png"): "/%06d.png",
        str(tmp_path / "%d_%d.png"): "exactly one frame number",
        str(tmp_path / "%06d.mp4"): "must end in an image type",
        "rtsp://host/x": "unsupported OUTPUT",
    }
    for uri, phrase in refusals.items():
        with pytest.raises(EdgeError, match=phrase) as caught:
            open_output(uri, 25)
        assert "\n" not in str(caught.value)


@pytest.mark.skipif(gui_backend() is not None, reason="this OpenCV has a GUI backend")
def test_display_without_a_gui_backend_suggests_headless() -> None:
    with pytest.raises(EdgeError, match="--headless") as caught:
        open_output("display://0", 25)
    assert "\n" not in str(caught.value)


def test_video_is_renamed_only_on_a_clean_close(tmp_path: Path) -> None:
    frames = _clip_frames(6)
    path = tmp_path / "out.mp4"
    good = VideoOutput(path, 25)
    for image in frames[:3]:
        good.write(image)
    good.close(ok=True)
    before = path.read_bytes()
    failed = VideoOutput(path, 25)
    for image in frames:
        failed.write(image)
    assert failed.partial.exists() and failed.partial.name.startswith(".")
    failed.close(ok=False)
    assert path.read_bytes() == before and not failed.partial.exists()
    crashed = VideoOutput(path, 25)  # a killed process never closes: the partial stays, OUTPUT is untouched
    crashed.write(frames[0])
    assert path.read_bytes() == before and crashed.partial.exists()
    crashed.close(ok=True)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 1 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == SMALL
    cap.release()


def test_a_video_is_fsynced_before_its_rename_and_a_failed_one_leaves_output(tmp_path: Path, monkeypatch) -> None:
    frames = _clip_frames(2)
    path = tmp_path / "out.mp4"
    path.write_bytes(b"\x00\x00\x00\x08ftyp")  # an existing video, to be replaced
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    output = VideoOutput(path, 25)
    output.write(frames[0])
    output.close(ok=True)
    assert synced == [str(output.partial), str(tmp_path)] and path.stat().st_size > 8

    def disk_full(fd: int) -> None:
        raise OSError("disk full")

    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", disk_full)
    output = VideoOutput(path, 25)
    output.write(frames[0])
    with pytest.raises(OSError, match="disk full"):
        output.close(ok=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_a_plain_cpu_session_takes_an_intra_op_thread_count() -> None:
    encoder = default_model_dir() / "encoder.onnx"
    options = cpu_session(encoder, threads=1).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert cpu_session(encoder).get_session_options().intra_op_num_threads == 0  # ONNX Runtime's default


def test_image_output_numbers_frames_from_zero(tmp_path: Path) -> None:
    frames = _clip_frames(3)
    output = open_output(str(tmp_path / "deep" / "er" / "%04d.png"), 25)
    for image in frames:
        output.write(image)
    output.close()
    names = sorted(p.name for p in (tmp_path / "deep" / "er").iterdir())
    assert names == ["0000.png", "0001.png", "0002.png"]
    assert np.array_equal(cv2.imread(str(tmp_path / "deep" / "er" / "0002.png")), frames[2])


# the pipeline


def test_reconstructs_at_the_frame_size_with_stage_timings(backend: Backend, tmp_path: Path) -> None:
    output = open_output(str(tmp_path / "rec"), 25)
    with open_source("sample://", width=SMALL) as source:
        config = PipelineConfig(max_frames=5, tokens=tmp_path / "t.ptok")
        report = Pipeline(source, backend, config, output).run()
    assert report.frames == 5 and report.dropped == 0 and report.gaps == [] and not report.stopped
    assert report.size == (160, 90) and report.model_size == (160, 96) and report.grid == (12, 20)
    assert report.raw_bits_per_frame == 12 * 20 * 10 and report.psnr_db > 20
    assert set(report.stage_ms) == {"capture", "preprocess", "encode", "decode", "postprocess", "tokens", "write"}
    assert all(0 <= ms["p50"] <= ms["p95"] for ms in report.stage_ms.values())
    assert report.latency_ms["p50"] >= report.stage_ms["encode"]["p50"] and report.fps > 0
    images = [cv2.imread(str(p)) for p in sorted((tmp_path / "rec").iterdir())]
    assert len(images) == 5 and all(image.shape == (90, 160, 3) for image in images)
    stats = stream_stats(tmp_path / "t.ptok")
    assert stats.frames == 5 and report.bytes_per_frame == pytest.approx(stats.bytes_per_frame, abs=0.01)
    with TokenStreamReader(tmp_path / "t.ptok") as reader:
        h = reader.header
        assert (h.width, h.height, h.model_width, h.model_height, h.fit) == (160, 90, 160, 96, "pad")
        assert h.fps == 25 and h.metadata["preset"] == backend.manifest.data["preset"]
        assert h.metadata["source"] == "sample://" and h.codebook_sha256 == backend.manifest.codebook_sha256


def test_without_tokens_bytes_are_counted_in_bounded_space(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(tokens: Path | None) -> float:
        with open_source("sample://", width=SMALL) as source:
            return Pipeline(source, backend, PipelineConfig(max_frames=65, tokens=tokens)).run().bytes_per_frame

    kept = run(tmp_path / "kept.ptok")
    monkeypatch.setattr(token_sink, "SCRATCH_LIMIT", 1)  # cut the scratch stream after every chunk
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    assert run(None) == kept
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch folder is gone


def test_a_stage_error_stops_every_stage_and_is_raised_once(backend: Backend, tmp_path: Path) -> None:
    class FailingBackend:
        def __init__(self) -> None:
            self.calls = 0

        def __getattr__(self, name: str) -> object:
            return getattr(backend, name)

        def encode(self, images: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 4:
                raise RuntimeError("device lost")
            return backend.encode(images)

    failing = FailingBackend()
    with open_source("sample://", width=SMALL) as source:
        output = open_output(str(tmp_path / "out.mp4"), 25)
        pipeline = Pipeline(source, failing, PipelineConfig(tokens=tmp_path / "t.ptok"), output)
        with pytest.raises(RuntimeError, match="device lost"):
            pipeline.run()
    assert failing.calls == 4 and _threads() == []
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out*"))  # partial video abandoned
    items, reader = _read_all(tmp_path / "t.ptok")
    assert reader.report.ok and reader.report.torn_tail_bytes == 0 and len(items) <= 3


def test_a_size_change_mid_stream_is_one_clear_error(backend: Backend, tmp_path: Path) -> None:
    frames = _clip_frames(2)
    cv2.imwrite(str(tmp_path / "a1.png"), frames[0])
    cv2.imwrite(str(tmp_path / "a2.png"), cv2.resize(frames[1], (120, 90)))
    with open_source(str(tmp_path)) as source:
        output = open_output(str(tmp_path / "out.mkv"), 25)
        pipeline = Pipeline(source, backend, PipelineConfig(tokens=tmp_path / "t.ptok"), output)
        with pytest.raises(EdgeError, match=r"frame 1 is 120x90 but the stream started at 160x90.*--input-width 160"):
            pipeline.run()
    assert _threads() == []
    items, reader = _read_all(tmp_path / "t.ptok")  # the frame before the change is finished and written
    assert len(items) == 1 and reader.report.ok
    cap = cv2.VideoCapture(str(tmp_path / "out.mkv"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 1
    cap.release()


def test_stop_finishes_queued_frames_and_flushes(backend: Backend, tmp_path: Path) -> None:
    with open_source("sample://", width=SMALL, loop=-1) as source:
        pipeline = Pipeline(source, backend, PipelineConfig(tokens=tmp_path / "t.ptok"))
        seen: list[int] = []

        def on_progress(progress: pipeline_module.Progress) -> None:
            seen.append(progress.frames)
            if progress.frames >= 10:
                pipeline.stop()

        report = pipeline.run(on_progress, every_s=0.05)
    assert report.stopped and report.frames >= 10 and seen
    items, reader = _read_all(tmp_path / "t.ptok")
    assert len(items) == report.frames and reader.report.ok and reader.report.torn_tail_bytes == 0


class PacedBackend:
    """The real backend, its encoder held to at least ``every_s`` per call: a model slower than the camera, as on
    a loaded device, whatever this machine's speed."""

    def __init__(self, backend: Backend, every_s: float) -> None:
        self.backend, self.every_s = backend, every_s

    def encode(self, images: np.ndarray) -> np.ndarray:
        start = time.monotonic()
        ids = self.backend.encode(images)
        time.sleep(max(0.0, start + self.every_s - time.monotonic()))
        return ids

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)


def test_live_source_drops_old_frames_and_its_gaps_go_into_the_stream(backend: Backend, tmp_path: Path) -> None:
    """A 100 FPS camera that disconnects after 10 frames, read by a 20 FPS model: frames are dropped, and the
    outage (inside the 8 frames taken) is a gap in the stream."""
    camera = ClipCameraDevice(Connection(fail_after=10), Connection(), fps=100.0)
    uri = "rtsp://admin:secret@cam:554/live"
    source = LiveSource(uri, camera.open, width=SMALL, retries=3, backoff_s=0.01, stall_timeout_s=1.0)
    output = open_output(str(tmp_path / "rec"), 25)
    slow = PacedBackend(backend, every_s=0.05)
    with source:
        report = Pipeline(source, slow, PipelineConfig(max_frames=8, tokens=tmp_path / "t.ptok"), output).run()
    assert report.frames == 8 and report.dropped == source.dropped > 0
    assert len(report.gaps) == len(source.gaps) == 1
    items, reader = _read_all(tmp_path / "t.ptok")
    gaps = [item for item in items if isinstance(item, Gap)]
    assert [(g.from_ms, g.to_ms) for g in gaps] == report.gaps and reader.report.ok
    assert reader.header.metadata["source"] == "rtsp://admin:***@cam:554/live"
    assert sum(isinstance(item, Frame) for item in items) == 8
