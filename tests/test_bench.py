"""provq-bench on the shipped model and clip: rows, figures, codecs, floors, outputs and one-line user errors."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from provq.edge_runtime import bench, bench_args, bench_codecs, bench_video
from provq.edge_runtime.bench_cli import NO_MATPLOTLIB, main
from provq.edge_runtime.quality import psnr, ssim
from provq.edge_runtime.stable import DEFAULT_MARGIN

SMALL = ["--size", "128x128", "--frames", "4", "--warmup", "1"]
TINY = ["--size", "64x64", "--frames", "2", "--warmup", "0", "--backends", "onnxruntime", "--precisions", "fp32"]


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run over every backend and precision with every output written."""
    folder = tmp_path_factory.mktemp("bench")
    paths = {"json": folder / "b.json", "markdown": folder / "b.md", "plot": folder / "b.png"}
    argv = [*SMALL, "--backends", "onnxruntime,tensorrt,pytorch", "--precisions", "fp32,fp16,int8,fp16-int8"]
    for flag, path in paths.items():
        argv += [f"--{flag}", str(path)]
    code, out, err = _run(argv)
    assert code == 0, err
    return {"report": json.loads(paths["json"].read_text()), "stdout": out, **paths}


def _row(report: dict[str, Any], backend: str, precision: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if (r["backend"], r["precision"]) == (backend, precision))


def test_json_has_the_documented_fields(full: dict[str, Any]) -> None:
    report = full["report"]
    assert {"rows", "environment", "codecs", "config"} <= set(report)
    assert len(report["rows"]) == 12 and report["config"]["model_size"] == [128, 128]
    keys = ("backend", "precision", "status", "latency_ms_p50", "latency_ms_p95", "fps", "psnr_db", "ssim",
            "token_agreement", "bytes_per_frame", "encoder", "decoder", "round_trip", "speedup_vs_fp32")  # fmt: skip
    for row in report["rows"]:
        for key in keys:
            assert key in row, key
        if row["status"] == "ok":
            for stage in ("encoder", "decoder", "round_trip"):
                block = row[stage]
                assert block["calls"] == 4 and 0 < block["latency_ms_p50"] <= block["latency_ms_p95"]
                assert block["latency_ms_iqr"] >= 0 and block["latency_ms_mad"] >= 0
            assert row["latency_ms_p50"] == row["round_trip"]["latency_ms_p50"]
            assert isinstance(row["fps"], float) and isinstance(row["bytes_per_frame"], float)
            assert row["peak_rss_mb"] > 0 and row["rss_mb"] > 0
    env = report["environment"]
    assert env["cores"] >= 1 and env["cpu"] and env["date"]
    assert {"onnxruntime", "opencv", "numpy", "python", "provq", "tensorrt"} <= set(env["versions"])


def test_rows_that_run_and_rows_that_say_why(full: dict[str, Any]) -> None:
    """The shipped default is quantization-aware: its model of record is the INT8 network (the Q/DQ files run as
    written), which every row's token agreement is measured against."""
    report = full["report"]
    assert report["reference"] == "int8 Q/DQ files run as written"
    fp32, int8 = _row(report, "onnxruntime", "fp32"), _row(report, "onnxruntime", "int8")
    assert fp32["status"] == int8["status"] == "ok"
    assert int8["token_agreement"] >= 0.99 and 0.5 < fp32["token_agreement"] < 1.0  # FP32 is not the model of record
    assert fp32["psnr_db"] > 20 and int8["psnr_db"] > 20 and 0.3 < fp32["ssim"] <= 1.0
    assert fp32["speedup_vs_fp32"] == 1.0 and int8["speedup_vs_fp32"] > 0
    # previous-frame coding never costs more than plain keyframes, and zlib beats the raw packed size
    assert 0 < fp32["bytes_per_frame"] <= fp32["bytes_per_frame_plain"] <= fp32["raw_bytes_per_frame"] * 1.1
    fp16 = _row(report, "onnxruntime", "fp16")  # FP16 files on a CPU: FP32 arithmetic on FP16-rounded weights
    assert fp16["status"] == "ok" and abs(fp16["psnr_db"] - fp32["psnr_db"]) < 0.1
    assert abs(fp16["token_agreement"] - fp32["token_agreement"]) < 0.02  # FP16 keeps FP32's ids
    split = _row(report, "onnxruntime", "fp16-int8")  # FP16 encoder, INT8 decoder: FP32's ids, INT8's decoder
    assert split["status"] == "ok" and "encoder fp16 + decoder int8" in split["runs_on"]
    assert abs(split["token_agreement"] - fp32["token_agreement"]) < 0.02 and split["token_agreement"] < 0.99
    if not _tensorrt_importable():
        for precision in ("fp32", "fp16", "int8", "fp16-int8"):
            assert _row(report, "tensorrt", precision)["status"] == "unavailable: tensorrt not installed"
    torch_row = _row(report, "pytorch", "int8")  # the fake-quantized checkpoint: the model of record itself
    assert torch_row["status"] == "ok" and torch_row["token_agreement"] >= 0.99
    assert "fake-quantized" in torch_row["runs_on"]
    assert _row(report, "pytorch", "fp32")["status"].startswith("unavailable: ")
    assert "tensorrt/fp16: unavailable" in full["stdout"]


def test_codec_baselines_match_the_token_stream_size(full: dict[str, Any]) -> None:
    report = full["report"]
    target = _row(report, "onnxruntime", "fp32")["bytes_per_frame"]
    codecs = {c["codec"]: c for c in report["codecs"]}
    assert set(codecs) == {"jpeg", "webp", "h264"}  # H.264 too: the input is a video
    for c in codecs.values():
        assert c["status"] == "ok" and c["target_bytes_per_frame"] == target and 1 <= c["quality"] <= 100
        assert c["psnr_db"] > 10 and 0 < c["ssim"] <= 1 and c["encode_ms"] > 0 and c["decode_ms"] > 0
        # within a small factor, unless even quality 1 is bigger (JPEG's headers alone are ~600 bytes)
        assert 0.33 < c["bytes_ratio"] < 3 or (c["quality_limited"] and c["quality"] == 1), c


def test_video_inputs_get_rate_distortion_points_beside_h264(full: dict[str, Any]) -> None:
    video = full["report"]["video"]
    points = {p["setting"]: p for p in video["points"]}
    assert list(points) == ["zlib", "ctx", f"stable {DEFAULT_MARGIN:g}"]
    assert points["zlib"]["psnr_db"] == points["ctx"]["psnr_db"]  # the same ids, coded two ways
    assert points["ctx"]["changed_ids_per_frame"] == points["zlib"]["changed_ids_per_frame"] > 0
    assert points[f"stable {DEFAULT_MARGIN:g}"]["changed_ids_per_frame"] <= points["ctx"]["changed_ids_per_frame"]
    assert all(p["write_ms"] > 0 and p["read_ms"] > 0 for p in points.values())
    assert len(video["h264"]) == 3
    for point, h264 in zip(video["points"], video["h264"], strict=True):
        assert h264["status"] == "ok" and h264["target_bytes_per_frame"] == point["bytes_per_frame"]
        assert 0.5 < h264["bytes_ratio"] < 2 and h264["psnr_db"] > 10
    assert "Rate-distortion" in full["markdown"].read_text()


def test_h264_without_pyav_is_one_clear_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_video.video_readers, "import_pyav", lambda: None)
    frames = [np.zeros((64, 64, 3), np.uint8)] * 2
    assert bench_video.h264_baseline(frames, 25.0, 500.0)["status"] == bench_video.H264_MISSING


def test_no_video_skips_h264_and_the_points(tmp_path: Path) -> None:
    code, _out, err = _run([*TINY, "--no-video", "--json", str(tmp_path / "b.json")])
    report = json.loads((tmp_path / "b.json").read_text())
    assert code == 0, err
    assert report["video"] is None and {c["codec"] for c in report["codecs"]} == {"jpeg", "webp"}


def test_markdown_and_plot_are_written(full: dict[str, Any]) -> None:
    text = full["markdown"].read_text()
    assert "| onnxruntime | int8 | ok |" in text and "Environment:" in text and "| webp |" in text
    assert full["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(full["plot"])).shape[1] > 600


def test_codec_quality_search_hits_a_reachable_target() -> None:
    frames = [
        cv2.imread(str(p)) for p in sorted((Path(bench.__file__).parent / "assets/sample/images").glob("*.jpg"))[:3]
    ]
    frames = [bench.cover_crop(f, 160, 128) for f in frames]
    target = np.mean([cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 40])[1].size for f in frames])
    entry = bench_codecs.codec_baseline(frames, "jpeg", ".jpg", cv2.IMWRITE_JPEG_QUALITY, float(target))
    assert abs(entry["quality"] - 40) <= 3 and 0.9 < entry["bytes_ratio"] < 1.1 and not entry["quality_limited"]


def test_floor_missed_exits_1_and_names_it() -> None:
    code, _out, err = _run([*TINY, "--floor", "token_agreement=0.5", "--floor", "psnr_db=99"])
    assert code == 1
    missed = [line for line in err.splitlines() if "floor missed" in line]
    assert len(missed) == 1 and "onnxruntime/fp32 psnr_db" in missed[0] and "below the floor 99" in missed[0]


def test_floors_ceilings_and_scoped_rows() -> None:
    ok = {"backend": "onnxruntime", "precision": "int8", "status": "ok", "fps": 20.0, "latency_ms_p50": 50.0}
    off = {"backend": "tensorrt", "precision": "int8", "status": "unavailable: tensorrt not installed"}
    report = {"rows": [ok, off]}
    floors, check = bench_args.parse_floor, bench_args.check_floors
    assert check(report, [floors("fps=10"), floors("latency_ms_p50=60")]) == []
    assert "above the ceiling 40" in check(report, [floors("latency_ms_p50=40")])[0]
    assert "below the floor 30" in check(report, [floors("onnxruntime/int8:fps=30")])[0]
    assert "did not run" in check(report, [floors("tensorrt/int8:fps=1")])[0]


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--backends", "onnx"], "unknown backend 'onnx'"),
        (["--precisions", "fp64"], "unknown precision 'fp64'"),
        (["--model", "/nonexistent/model"], "model directory /nonexistent/model does not exist"),
        (["--input", "/nonexistent/clip.mp4"], "does not exist"),
        (["--input", "EMPTY"], "holds no images"),
        (["--input", "CORRUPT"], "cannot open video"),
        (["--size", "12x"], "--size must be WxH"),
        (["--size", "4x4"], "too small"),
        (["--frames", "abc"], "invalid int value"),
        (["--frames", "0"], "--frames must be"),
        (["--floor", "fsp=3"], "unknown metric 'fsp'"),
        (["--floor", "fps"], "expected metric=value"),
        (["--floor", "onnxruntime/int9:fps=1"], "BACKEND/PRECISION"),
        (["--floor", "tensorrt/int8:fps=1"], "not benchmarked"),
        (["--json", "/nonexistent/dir/b.json"], "does not exist"),
        (["--stable-margins", "a,b"], "--stable-margins 'a,b'"),
        (["--stable-margins", "-1"], "--stable-margins must be numbers >= 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], phrase: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(range(256)) * 8)
    argv = [{"EMPTY": str(tmp_path / "empty"), "CORRUPT": str(tmp_path / "corrupt.mp4")}.get(a, a) for a in argv]
    code, out, err = _run([*TINY, *argv])
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("provq-bench: error: ") and phrase in lines[0], lines[0]


def test_plot_without_matplotlib_stops_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = _run([*TINY, "--plot", str(tmp_path / "b.png")])
    assert code == 2 and out == "" and err.strip() == f"provq-bench: error: {NO_MATPLOTLIB}"
    assert not (tmp_path / "b.png").exists()


def test_runs_with_torch_blocked_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    argv = [*TINY, "--backends", "onnxruntime,pytorch", "--json", str(out)]
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from provq.edge_runtime.bench_cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["onnxruntime"]["status"] == "ok"
    assert rows["pytorch"]["status"] == "unavailable: torch not installed"


def test_quality_metrics_match_skimage() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    expected = metrics.structural_similarity(
        a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(a, b) == pytest.approx(expected, abs=1e-9)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == 100.0


def test_latency_spread_and_cover_crop() -> None:
    stats = bench.latency_stats([1.0, 2.0, 3.0, 4.0, 100.0], batch=2)
    assert stats["latency_ms_p50"] == 3.0 and stats["latency_ms_iqr"] == 2.0 and stats["latency_ms_mad"] == 1.0
    assert stats["fps"] == pytest.approx(2000 / 3)
    wide = np.zeros((270, 480, 3), np.uint8)
    wide[:, 200:280] = 255  # a centred bar survives the crop of the sides
    square = bench.cover_crop(wide, 100, 100)
    assert square.shape == (100, 100, 3) and square[50, 50].max() == 255 and square[50, 0].max() == 0


def test_batches_round_frames_down(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    code, _out, err = _run([*TINY, "--frames", "3", "--batch", "2", "--json", str(out)])
    assert code == 0, err
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert report["config"]["frames"] == 2 and row["round_trip"]["calls"] == 1
    assert row["fps"] == pytest.approx(2000 / row["latency_ms_p50"])
