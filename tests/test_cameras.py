"""Many cameras through one model (provq-run --input ..., cameras.py): real ONNX Runtime sessions with the shipped
default model, on the sample clip and photos at small sizes, and live-camera doubles streaming the real clip."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
from test_run_cli import one_error_line, popen_run, read_pngs, wait_for_frames
from test_sources import ClipCameraDevice

from provq.edge_runtime.backends import Backend, open_backend
from provq.edge_runtime.cameras import CameraPipeline
from provq.edge_runtime.run_cameras import input_name
from provq.edge_runtime.run_cli import main as run_main
from provq.edge_runtime.source_uri import sample_clip
from provq.edge_runtime.stream_state import PipelineConfig
from provq.edge_runtime.tokenstream import TokenStreamReader

if TYPE_CHECKING:
    from rtsp_server import RtspServer

PHOTOS = sample_clip().parent / "images"
SIZE = ["--input-width", "160", "--input-height", "96"]  # 12 x 20 tokens: fast


def ids_of(path: Path) -> list[np.ndarray]:
    with TokenStreamReader(path) as reader:
        assert reader.report.ok and reader.report.torn_tail_bytes == 0
        return [frame.ids for frame in reader.frames()]


def frames_folder(folder: Path, size: tuple[int, int], count: int, offset: int = 0) -> Path:
    """``count`` clip frames at ``size`` (width, height) as PNGs: lossless, so every run reads the same pixels."""
    folder.mkdir()
    cap = cv2.VideoCapture(str(sample_clip()))
    for _ in range(offset):
        cap.read()
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.resize(cap.read()[1], size, interpolation=cv2.INTER_AREA))
    cap.release()
    return folder


@pytest.fixture(scope="module")
def backend() -> Backend:
    return open_backend("default", "onnxruntime", "fp32")


def test_batched_ids_and_reconstructions_equal_single_stream_runs(tmp_path: Path) -> None:
    inputs = ["sample://", str(PHOTOS), str(frames_folder(tmp_path / "late", (160, 96), 6, offset=40))]
    batched = ["--tokens", str(tmp_path / "b{i}.ptok"), "--output", str(tmp_path / "rb{i}" / "%03d.png")]
    args = [arg for uri in inputs for arg in ("--input", uri)]
    assert run_main([*args, *SIZE, *batched, "--json", str(tmp_path / "b.json"), "--max-frames", "6"]) == 0
    s = json.loads((tmp_path / "b.json").read_text())
    assert s["totals"]["frames"] == 18 and s["totals"]["encoder_calls"] == 6 and s["totals"]["frames_per_call"] == 3
    assert s["totals"]["dropped"] == 0 and s["totals"]["gaps"] == 0 and s["totals"]["fps"] > 0
    for i, uri in enumerate(inputs):
        single = ["--tokens", str(tmp_path / f"s{i}.ptok"), "--json", str(tmp_path / f"s{i}.json")]
        assert run_main([uri, str(tmp_path / f"rs{i}" / "%03d.png"), *SIZE, *single, "--max-frames", "6"]) == 0
        batched_ids, single_ids = ids_of(tmp_path / f"b{i}.ptok"), ids_of(tmp_path / f"s{i}.ptok")
        assert len(batched_ids) == len(single_ids) == 6
        assert all(np.array_equal(a, b) for a, b in zip(batched_ids, single_ids, strict=True)), f"input {i}"
        ours, theirs = read_pngs(tmp_path / f"rb{i}"), read_pngs(tmp_path / f"rs{i}")
        assert len(ours) == 6 and all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
        one = json.loads((tmp_path / f"s{i}.json").read_text())
        stream = s["streams"][i]
        assert stream["input"] == uri and stream["tokens"] == str(tmp_path / f"b{i}.ptok") and stream["error"] is None
        for key in ("frames", "bytes_per_frame", "psnr_db", "size", "model_size", "grid", "changed_ids_per_frame"):
            assert stream[key] == one[key], key
    assert s["streams"][0]["grid"] == [12, 20] and s["streams"][0]["psnr_db"] > 20


def test_stable_tokens_are_kept_per_camera(tmp_path: Path) -> None:
    inputs = ["sample://", str(PHOTOS)]
    args = [arg for uri in inputs for arg in ("--input", uri)]
    common = [*SIZE, "--stable-tokens", "--max-frames", "5", "--keyframe-interval", "3"]
    assert run_main([*args, *common, "--tokens", str(tmp_path / "b{i}.ptok")]) == 0
    for i, uri in enumerate(inputs):
        assert run_main([uri, *common, "--tokens", str(tmp_path / f"s{i}.ptok")]) == 0
        ours, theirs = ids_of(tmp_path / f"b{i}.ptok"), ids_of(tmp_path / f"s{i}.ptok")
        assert len(ours) == 5 and all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_sizes_are_grouped_and_batches_split_and_a_short_file_ends_alone(tmp_path: Path) -> None:
    small = [frames_folder(tmp_path / f"small{i}", (96, 64), 4 if i == 0 else 6, offset=10 * i) for i in range(3)]
    large = frames_folder(tmp_path / "large", (160, 96), 6)
    args = [arg for folder in (*small, large) for arg in ("--input", str(folder))]
    out = ["--tokens", str(tmp_path / "{name}.ptok"), "--json", str(tmp_path / "s.json"), "--max-batch", "2"]
    assert run_main([*args, *out]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert [st["frames"] for st in s["streams"]] == [4, 6, 6, 6]  # the first folder ended; the others went on
    assert [st["model_size"] for st in s["streams"]] == [[96, 64]] * 3 + [[160, 96]]
    # rounds 1-4: three small frames in calls of 2 + 1, and the large one alone; rounds 5-6: two small, one large
    assert s["totals"]["encoder_calls"] == 4 * 3 + 2 * 2 and s["totals"]["max_batch"] == 2
    assert [len(ids_of(tmp_path / f"{p.name}.ptok")) for p in (*small, large)] == [4, 6, 6, 6]


def test_live_cameras_share_the_model_fairly_and_drop_their_own_oldest(backend: Backend) -> None:
    devices = [ClipCameraDevice(fps=100.0) for _ in range(3)]
    sources = [device.source(width=160) for device in devices]
    cameras = CameraPipeline(sources, backend, [PipelineConfig()] * 3)

    def stop_later(progress: object) -> None:
        if sum(s.frames for s in cameras.progress().streams) >= 45:
            cameras.stop()

    try:
        report = cameras.run(stop_later, every_s=0.05)
    finally:
        for source in sources:
            source.close()
    frames = [stream.frames for stream in report.streams]
    assert report.stopped and sum(frames) >= 45 and report.errors == [None] * 3
    assert min(frames) >= 0.8 * max(frames), frames  # one slot per ready camera per round
    assert all(stream.dropped > 0 for stream in report.streams)  # each camera outran the model and dropped its own
    assert report.calls < sum(frames)  # frames were batched


def test_four_rtsp_cameras_through_one_model(rtsp_servers: Callable[..., RtspServer], tmp_path: Path) -> None:
    server = rtsp_servers(tuple(f"cam{i}" for i in range(4)), width=192, height=144, rate=10)
    args = [arg for i in range(4) for arg in ("--input", server.url(f"cam{i}"))]
    out = ["--tokens", str(tmp_path / "{name}.ptok"), "--json", str(tmp_path / "s.json"), "--max-frames", "12"]
    assert run_main([*args, *out]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert [st["frames"] for st in s["streams"]] == [12] * 4 and s["totals"]["frames"] == 48
    assert all(st["size"] == [192, 144] and st["gaps"] == [] and st["error"] is None for st in s["streams"])
    assert all(st["fps"] > 0 for st in s["streams"]) and s["totals"]["encoder_calls"] <= 48
    assert [len(ids_of(tmp_path / f"cam{i}.ptok")) for i in range(4)] == [12] * 4


def test_sigterm_flushes_every_stream(tmp_path: Path) -> None:
    args = ["--input", "sample://", "--input", str(PHOTOS), *SIZE, "--input-loop", "-1", "--tokens", "{i}.ptok"]
    proc = popen_run(*args, "--json", "s.json", cwd=tmp_path)
    wait_for_frames(tmp_path / "1.ptok", 30, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["signal"] == "SIGTERM" and s["totals"]["stopped"]
    counts = [len(ids_of(tmp_path / f"{i}.ptok")) for i in range(2)]
    assert counts == [st["frames"] for st in s["streams"]] and min(counts) >= 30


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    two = ["--input", "sample://", "--input", str(PHOTOS)]
    return {
        "one token file": ([*two, "--tokens", str(tmp_path / "t.ptok")], "names one file for 2 inputs: put {i}"),
        "one output": ([*two, "--output", str(tmp_path / "o.mp4")], "--output"),
        "same name": (
            ["--input", str(PHOTOS), "--input", str(PHOTOS), "--tokens", str(tmp_path / "{name}.ptok")],
            "inputs 0 and 1 both map to --tokens",
        ),
        "mixed": (["sample://", *two], "--input cannot be mixed with a positional INPUT"),
        "exists": ([*two, "--tokens", str(tmp_path / "{name}.ptok")], "images.ptok already exists"),
        "no input": ([], "no input: pass INPUT"),
        "output flag with INPUT": (["sample://", "--output", "o.mp4"], "--output is for several cameras"),
        "missing file": ([*two, "--input", str(tmp_path / "nowhere.mp4")], "nowhere.mp4"),
    }


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _bad_inputs(tmp_path)
    (tmp_path / "images.ptok").write_bytes(b"keep")  # {name} of the photo folder: already there
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (args, phrase) in cases.items():
        assert run_main(args) == 2, name
        line = one_error_line(capsys, "provq-run")
        assert phrase in line, (name, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "images.ptok").read_bytes() == b"keep"


def test_input_names() -> None:
    assert input_name("rtsp://user:pw@10.0.0.5:554/cam0?tcp", 0) == "cam0"
    assert input_name("/data/yard cam.mp4", 1) == "yard_cam" and input_name("csi://0", 2) == "input2"
    assert input_name("sample://", 3) == "input3" and input_name(str(PHOTOS), 4) == "images"


def test_bench_tool_compares_both_modes(tmp_path: Path) -> None:
    tool = Path(__file__).resolve().parent.parent / "tools" / "bench_cameras.py"
    args = ["--source", "files", "--cameras", "2", "--size", "64x48", "--seconds", "1", "--repeats", "1"]
    command = [sys.executable, str(tool), *args, "--phases", "saturation", "--json", str(tmp_path / "b.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    s = json.loads((tmp_path / "b.json").read_text())["saturation"]
    assert s["camera_rate"] == "unpaced" and s["ratio"] > 0
    for mode in ("batched", "separate"):
        (run,) = s[mode]["runs"]
        assert len(run["camera_fps"]) == 2 and min(run["camera_fps"]) > 0 and run["dropped"] == [0, 0]
        assert run["total_fps"] == pytest.approx(s[mode]["median_total_fps"])
    assert s["batched"]["runs"][0]["frames_per_call"] > 1.5  # files batch when both have a frame
    assert "ratio batched / separate" in done.stdout
