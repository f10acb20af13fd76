"""Live RTSP for real: GStreamer's RTSP server (tests/rtsp_server.py, a separate process on 127.0.0.1) serves the
sample clip as H.264, and provq reads it through the venv's OpenCV (PyPI's opencv-python-headless, FFmpeg backend):
tokenizing and reconstructing, a server killed mid-stream and restarted on the same port, a consumer slower than the
camera, two cameras of one batched run through a server restart, and servers that refuse, stay silent or lack
the path. Skipped here without the Debian packages; in CI
(PROVQ_CI=1) their absence fails.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
from test_run_cli import one_error_line, popen_run, read_pngs, wait_for_frames

from provq.edge_runtime.decode_cli import main as decode_main
from provq.edge_runtime.live_options import DEFAULT_LIVE_QUEUE, MAX_BACKOFF_S
from provq.edge_runtime.run_cli import main as run_main
from provq.edge_runtime.sources import Frame, FrameSource, open_source
from provq.edge_runtime.tokenstream import Gap, TokenStreamReader

if TYPE_CHECKING:
    from rtsp_server import RtspServer

    Servers = Callable[..., RtspServer]
    LogCapture = pytest.LogCaptureFixture

PICKUP_S = 5.0  # a restarted camera streams again within this


def _frames_and_gaps(path: Path) -> tuple[int, list[Gap]]:
    with TokenStreamReader(path) as reader:
        items = list(reader)
        assert reader.report.damaged == [] and reader.report.torn_tail_bytes == 0
    return sum(1 for item in items if not isinstance(item, Gap)), [item for item in items if isinstance(item, Gap)]


def test_provq_run_tokenizes_and_reconstructs_an_rtsp_camera(rtsp_servers: Servers, tmp_path: Path) -> None:
    server = rtsp_servers(("cam",), width=384, height=288, rate=10)
    ptok, report = tmp_path / "cam.ptok", tmp_path / "run.json"
    args = [server.url(), str(tmp_path / "recon" / "%06d.png"), "--tokens", str(ptok), "--json", str(report)]
    assert run_main([*args, "--max-frames", "12"]) == 0
    s = json.loads(report.read_text())
    assert s["frames"] == 12 and s["size"] == [384, 288] and s["grid"] == [36, 48] and s["gaps"] == []
    assert s["input"] == server.url() and s["psnr_db"] > 20
    with TokenStreamReader(ptok) as reader:
        assert reader.header.fps == 10 and (reader.header.width, reader.header.height) == (384, 288)
        assert "rtsp://127.0.0.1" in reader.header.metadata["source"]
    assert decode_main([str(ptok), str(tmp_path / "dec" / "%06d.png")]) == 0
    ours, decoded = read_pngs(tmp_path / "recon"), read_pngs(tmp_path / "dec")
    assert len(ours) == len(decoded) == 12
    assert all(np.array_equal(a, b) for a, b in zip(ours, decoded, strict=True))  # the tokens are the reconstruction


@pytest.mark.slow
def test_killed_server_is_reconnected_and_the_gap_recorded(rtsp_servers: Servers, tmp_path: Path) -> None:
    """kill -9 the server after the first chunk, keep it down 3 s, restart it on the same port: provq-run goes on,
    the .ptok holds the gap between the frames before and after, every chunk decodes, and --json counts it."""
    server = rtsp_servers(("cam",), width=192, height=144, rate=10)
    ptok, report, down_s = tmp_path / "cam.ptok", tmp_path / "run.json", 3.0
    proc = popen_run(server.url(), "--tokens", ptok, "--json", report, cwd=tmp_path)
    try:
        wait_for_frames(ptok, 30, proc, timeout=60)  # the first chunk is on disk
        server.kill()
        killed = time.monotonic()
        time.sleep(down_s)
        server.start()
        wait_for_frames(ptok, 60, proc, timeout=60)  # a chunk after the gap
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "reconnecting" in stderr and "back after" in stderr and "Traceback" not in stderr
    s = json.loads(report.read_text())
    frames, gaps = _frames_and_gaps(ptok)
    assert frames == s["frames"] >= 60 and len(gaps) == len(s["gaps"]) == 1
    gap = gaps[0]
    assert [gap.from_ms, gap.to_ms] == s["gaps"][0] and 0 < gap.frame_index < frames
    outage_s = (gap.to_ms - gap.from_ms) / 1000
    assert down_s <= outage_s <= (time.monotonic() - killed)
    assert outage_s - down_s < PICKUP_S + 1.0  # + the frames the kill cut off and the detection
    assert decode_main([str(ptok), str(tmp_path / "dec.mkv")]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "dec.mkv"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    cap.release()


@pytest.mark.slow
def test_killed_server_gaps_every_camera_of_one_run(rtsp_servers: Servers, tmp_path: Path) -> None:
    """Four cameras of one server through one batched provq-run: the server killed for 5 s and restarted, every
    stream resumes, each .ptok records one gap and decodes whole, and the JSON counts a gap per stream."""
    mounts, down_s = ("cam0", "cam1", "cam2", "cam3"), 5.0
    server = rtsp_servers(mounts, width=192, height=144, rate=10)
    args = [arg for mount in mounts for arg in ("--input", server.url(mount))]
    proc = popen_run(*args, "--tokens", "{name}.ptok", "--json", "s.json", cwd=tmp_path)
    ptoks = [tmp_path / f"{mount}.ptok" for mount in mounts]
    try:
        for ptok in ptoks:
            wait_for_frames(ptok, 30, proc, timeout=90)
        server.kill()
        time.sleep(down_s)
        server.start()
        for ptok in ptoks:
            wait_for_frames(ptok, 60, proc, timeout=90)  # a chunk after the gap in each stream
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    s = json.loads((tmp_path / "s.json").read_text())
    for ptok, stream in zip(ptoks, s["streams"], strict=True):
        frames, gaps = _frames_and_gaps(ptok)
        assert frames == stream["frames"] >= 60 and len(gaps) == len(stream["gaps"]) == 1
        assert [gaps[0].from_ms, gaps[0].to_ms] == stream["gaps"][0] and 0 < gaps[0].frame_index < frames
        assert (gaps[0].to_ms - gaps[0].from_ms) / 1000 >= down_s
        assert decode_main([str(ptok), str(tmp_path / f"{ptok.stem}.mkv")]) == 0
    assert s["totals"]["gaps"] == len(mounts)


class _Reader:
    """Reads a source in a thread, noting when each frame arrived (time.monotonic)."""

    def __init__(self, source: FrameSource, every_s: float = 0.0) -> None:
        self.source = source
        self.every_s = every_s
        self.frames: list[tuple[float, Frame]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source:
                self.frames.append((time.monotonic(), frame))
                time.sleep(self.every_s)
        except BaseException as err:  # re-raised by the test
            self.error = err

    def first_after(self, moment: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            later = [t for t, _ in self.frames if t > moment]
            if later:
                return later[0]
            time.sleep(0.02)
        return None


@pytest.fixture
def caplog_sources(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="provq.edge_runtime.sources"):
        yield caplog


def test_restarted_server_streams_again_within_5_s(rtsp_servers: Servers, caplog_sources: LogCapture) -> None:
    """The camera is down 3 s: reconnect attempts back off (0.5, 1, 2 s, capped at 2 s) and the first frame after
    the restart arrives within 5 s of the server answering again."""
    assert MAX_BACKOFF_S < PICKUP_S - 1.0  # the next attempt after the restart comes in time, open included
    server = rtsp_servers(("cam",), width=192, height=144, rate=10)
    with open_source(server.url()) as source:
        reader = _Reader(source)
        assert reader.first_after(0, 10) is not None
        server.kill()
        killed = time.monotonic()
        time.sleep(3.0)
        server.start()
        restarted = time.monotonic()
        back = reader.first_after(restarted, PICKUP_S + 5)
        gaps = list(source.gaps)
    reader.thread.join(5)
    assert reader.error is None and back is not None
    assert back - restarted < PICKUP_S, f"{back - restarted:.2f} s from restart to the first frame"
    ((lost, found),) = gaps
    assert 3.0 <= (found - lost) / 1000 <= back - killed + 0.2
    attempts = [int(m) for m in re.findall(r"back after [\d.]+ s \(attempt (\d+)\)", caplog_sources.text)]
    assert attempts and attempts[0] >= 2  # refused attempts before it came back
    indices = [f.index for _, f in reader.frames]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted(rtsp_servers: Servers) -> None:
    """A 20 FPS camera read every 0.2 s: each frame handed over is the newest, the older ones are dropped, and
    the capture indices' holes match the count."""
    server = rtsp_servers(("cam",), width=192, height=144, rate=20)
    with open_source(server.url()) as source:
        reader = _Reader(source, every_s=0.2)
        deadline = time.monotonic() + 30
        while len(reader.frames) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        source.close()
        reader.thread.join(5)
        dropped, captured = source.dropped, source.captured
    assert reader.error is None and len(reader.frames) >= 12
    frames = [f for _, f in reader.frames]
    holes = sum(b.index - a.index - 1 for a, b in itertools.pairwise(frames))
    assert 0 < holes <= dropped  # every hole in the capture indices is a dropped frame
    # Every frame read was handed over or dropped, but for the newest (DEFAULT_LIVE_QUEUE = 1), which can still be
    # in the ring at close. (Drops before the first frame handed over and after the last one are not holes: how
    # many there are depends on how soon the reader started and the close came.)
    assert 0 <= captured - len(frames) - dropped <= DEFAULT_LIVE_QUEUE
    steady = frames[4:]  # after FFmpeg's opening burst
    stamps = np.diff([f.timestamp_ms for f in steady])
    assert np.median(stamps) >= 150  # frames 0.2 s apart: the consumer's pace, not the camera's 50 ms
    assert np.median(np.diff([f.index for f in steady])) >= 3  # about 4 camera frames per consumed one


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    sock.close()


def test_refused_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from rtsp_server import free_port

    port = free_port()
    started = time.monotonic()
    assert run_main([f"rtsp://127.0.0.1:{port}/cam", "--stall-timeout", "2"]) == 2
    line = one_error_line(capsys, "provq-run")
    assert f"127.0.0.1:{port} refused the connection" in line and time.monotonic() - started < 6


def test_silent_server_is_one_line_after_a_bounded_wait(capsys: pytest.CaptureFixture[str], silent_port: int) -> None:
    started = time.monotonic()
    assert run_main([f"rtsp://127.0.0.1:{silent_port}/cam", "--stall-timeout", "2"]) == 2
    waited = time.monotonic() - started
    line = one_error_line(capsys, "provq-run")
    assert "accepts connections but sent no RTSP answer within 2 s" in line
    assert 2 <= waited < 2 + 2 * 2 + 3  # FFmpeg's open timeout, then the DESCRIBE's connect and answer


def test_missing_mount_is_one_line(capsys: pytest.CaptureFixture[str], rtsp_servers: Servers) -> None:
    server = rtsp_servers(("cam",), width=192, height=144, rate=10)
    assert run_main([server.url("nosuch"), "--stall-timeout", "2"]) == 2
    line = one_error_line(capsys, "provq-run")
    assert "the server has no stream /nosuch (RTSP 404 Not Found)" in line
