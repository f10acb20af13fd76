"""provq-run and provq-decode as a user runs them, on the shipped sample clip (80 frames, 480x270: 270 is not a
multiple of the downsample factor 8) and streams made from it. Subprocesses where it matters (torch blocked, kill -9,
signals), in-process ``main()`` elsewhere to save the interpreter start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from provq.edge_runtime import tokenstream
from provq.edge_runtime.decode_cli import main as decode_main
from provq.edge_runtime.manifest import load_manifest
from provq.edge_runtime.outputs import gui_backend
from provq.edge_runtime.run_cli import main as run_main
from provq.edge_runtime.source_uri import sample_clip
from provq.edge_runtime.stable import DEFAULT_MARGIN
from provq.edge_runtime.tokenstream import StreamHeader, TokenStreamReader, TokenStreamWriter, stream_stats

TORCH_BLOCKED = (
    "import sys; sys.modules['torch'] = None; "
    "from provq.edge_runtime.{module} import main; sys.exit(main(sys.argv[1:]))"
)
RAW_BITS_480x272 = 60 * 34 * 10  # token grid 34 x 60 (480 x 272 padded), K = 1024 -> 10 bits


def cli(module: str, *args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A CLI in a fresh interpreter that cannot import torch."""
    code = TORCH_BLOCKED.format(module=module)
    command = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def popen_run(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    code = TORCH_BLOCKED.format(module="run_cli")
    command = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_frames(path: Path, frames: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Poll a stream being written until it holds ``frames`` complete frames."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            with TokenStreamReader(path) as reader:
                if sum(1 for _ in reader.frames()) >= frames:
                    return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{path} did not reach {frames} frames in {timeout} s")


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def read_pngs(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]


def one_error_line(captured: pytest.CaptureFixture[str], prog: str) -> str:
    lines = [line for line in captured.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in lines[0]
    return lines[0]


# the whole clip, as on a fresh install: torch blocked, tokens and --json (encoding only: no OUTPUT)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("full")
    done = cli("run_cli", "sample://", "--tokens", "t.ptok", "--json", "s.json", cwd=work)
    return work, done


def test_sample_runs_without_torch(full_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, done = full_run
    assert done.returncode == 0, done.stderr
    assert "stage ms" in done.stdout and "end-to-end" in done.stdout and "next: provq-decode t.ptok" in done.stdout
    assert "Traceback" not in done.stderr and "480x270" in done.stderr


def test_json_figures_are_sane(full_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    work, _ = full_run
    s = json.loads((work / "s.json").read_text())
    assert s["frames"] == 80 and s["dropped"] == 0 and s["gaps"] == [] and s["fps"] > 0
    assert s["size"] == [480, 270] and s["model_size"] == [480, 272] and s["grid"] == [34, 60]
    assert s["raw_bits_per_frame"] == RAW_BITS_480x272
    assert 0 < s["bytes_per_frame"] < s["raw_bits_per_frame"] / 8
    assert s["psnr_db"] is None  # nothing reconstructed without OUTPUT
    assert 0 < s["latency_ms_p50"] <= s["latency_ms_p95"]
    assert set(s["stage_ms"]) == {"capture", "preprocess", "encode", "tokens"}  # no output: nothing decoded
    assert all(0 <= ms["p50"] <= ms["p95"] for ms in s["stage_ms"].values())
    assert s["backend"] == "onnxruntime-cpu" and s["precision"] == "fp32" and s["input"] == "sample://"
    assert Path(s["model"]) == load_manifest("default").directory and s["signal"] is None
    stats = stream_stats(work / "t.ptok")
    assert stats.frames == 80 and s["bytes_per_frame"] == pytest.approx(stats.bytes_per_frame, abs=0.01)


def test_mp4_from_run_and_decode_at_the_clip_size(tmp_path: Path) -> None:
    ptok, json_path = tmp_path / "t.ptok", tmp_path / "s.json"
    args = ["sample://", str(tmp_path / "out.mp4"), "--tokens", str(ptok), "--json", str(json_path)]
    assert run_main([*args, "--max-frames", "5"]) == 0
    assert decode_main([str(ptok), str(tmp_path / "dec.mp4")]) == 0
    s = json.loads(json_path.read_text())
    assert s["psnr_db"] > 20 and set(s["stage_ms"]) >= {"decode", "postprocess"}
    ours, theirs = read_video(tmp_path / "out.mp4"), read_video(tmp_path / "dec.mp4")
    assert len(ours) == len(theirs) == s["frames"] == 5
    assert all(f.shape == (270, 480, 3) for f in ours + theirs)
    assert all(cv2.PSNR(a, b) > 35 for a, b in zip(ours, theirs, strict=True))  # one reconstruction, mp4v twice
    assert not list(tmp_path.glob(".*partial*"))


# reconstructions and provq-decode agree exactly


@pytest.mark.parametrize("fit", ["pad", "crop", "resize"])
def test_decode_reproduces_the_run_reconstructions(fit: str, tmp_path: Path) -> None:
    ptok = tmp_path / "t.ptok"
    args = ["sample://", str(tmp_path / "out" / "%06d.png"), "--tokens", str(ptok), "--json", str(tmp_path / "s.json")]
    assert run_main([*args, "--max-frames", "3", "--fit", fit]) == 0
    run_frames = read_pngs(tmp_path / "out")
    if fit == "crop":  # FFV1 in Matroska is lossless too
        assert decode_main([str(ptok), str(tmp_path / "dec.mkv")]) == 0
        decoded = read_video(tmp_path / "dec.mkv")
    else:
        assert decode_main([str(ptok), str(tmp_path / "dec" / "%06d.png")]) == 0
        decoded = read_pngs(tmp_path / "dec")
    assert len(run_frames) == len(decoded) == 3
    for ours, theirs in zip(run_frames, decoded, strict=True):
        assert ours.shape == (270, 480, 3) and np.array_equal(ours, theirs)
    assert json.loads((tmp_path / "s.json").read_text())["psnr_db"] > 20


# token stream size


@pytest.fixture(scope="module")
def static_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames of one real clip frame (160 px wide) with a little sensor-like noise."""
    folder = tmp_path_factory.mktemp("static")
    cap = cv2.VideoCapture(str(sample_clip()))
    frame = cv2.resize(cap.read()[1], (160, 90), interpolation=cv2.INTER_AREA)
    cap.release()
    rng = np.random.default_rng(0)
    for i in range(60):
        noisy = np.clip(frame + rng.normal(0, 1.0, frame.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), noisy)
    return folder


def test_delta_coding_shrinks_a_static_scene(static_scene: Path, tmp_path: Path) -> None:
    assert run_main([str(static_scene), "--tokens", str(tmp_path / "d.ptok"), "--json", str(tmp_path / "d.json")]) == 0
    s = json.loads((tmp_path / "d.json").read_text())
    assert s["frames"] == 60 and s["raw_bits_per_frame"] == 12 * 20 * 10
    assert s["bytes_per_frame"] <= 0.30 * s["raw_bits_per_frame"] / 8
    plain = ["--no-delta", "--codec", "none", "--json", str(tmp_path / "p.json"), "--max-frames", "10"]
    assert run_main([str(static_scene), *plain]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["bytes_per_frame"] >= s["raw_bits_per_frame"] / 8


def test_stable_tokens_change_fewer_ids_for_the_same_quality(static_scene: Path, tmp_path: Path) -> None:
    runs = {}
    for name, extra in {"plain": [], "stable": ["--stable-tokens"]}.items():
        args = [str(static_scene), str(tmp_path / f"{name}.mkv"), "--max-frames", "30", "--json", str(tmp_path / name)]
        assert run_main([*args, *extra]) == 0
        runs[name] = json.loads((tmp_path / name).read_text())
    plain, stable = runs["plain"], runs["stable"]
    assert plain["stable_tokens"] is None and stable["stable_tokens"] == DEFAULT_MARGIN  # the bare flag's margin
    assert plain["codec"] == stable["codec"] == "ctx"
    assert stable["changed_ids_per_frame"] < plain["changed_ids_per_frame"]
    assert stable["bytes_per_frame"] < plain["bytes_per_frame"]
    assert abs(stable["psnr_db"] - plain["psnr_db"]) < 0.3


def test_a_negative_margin_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main(["sample://", "--stable-tokens", "-1"])
    assert exit_info.value.code == 2 and "--stable-tokens: must be a number >= 0" in capsys.readouterr().err


# crashes and signals


def test_kill_9_leaves_every_complete_chunk_readable(tmp_path: Path) -> None:
    proc = popen_run("sample://", "--input-loop", "-1", "--input-width", "160", "--tokens", "t.ptok", cwd=tmp_path)
    try:
        wait_for_frames(tmp_path / "t.ptok", 60, proc)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    with TokenStreamReader(tmp_path / "t.ptok") as reader:
        frames = sum(1 for _ in reader.frames())
        report = reader.report
    assert report.ok and frames >= 60 and frames % 30 == 0  # whole chunks of 30 frames; a torn tail is ignored


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 0), ("SIGINT", 130)])
def test_a_signal_ends_the_run_with_everything_flushed(name: str, code: int, tmp_path: Path) -> None:
    args = ["sample://", "--input-loop", "-1", "--input-width", "160", "--tokens", "t.ptok", "--json", "s.json"]
    proc = popen_run(*args, cwd=tmp_path)
    try:
        wait_for_frames(tmp_path / "t.ptok", 30, proc)
        proc.send_signal(getattr(signal, name))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    s = json.loads((tmp_path / "s.json").read_text())
    with TokenStreamReader(tmp_path / "t.ptok") as reader:
        frames = sum(1 for _ in reader.frames())
        assert reader.report.ok and reader.report.torn_tail_bytes == 0
    assert s["frames"] == frames >= 30 and s["signal"] == name and s["stopped"]


# user errors: one line, exit 2


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    (tmp / "notes.mp4").write_text("not a video")
    (tmp / "old.ptok").write_bytes(b"x")
    (tmp / "model").mkdir()
    (tmp / "model" / "manifest.json").write_bytes((load_manifest("default").directory / "manifest.json").read_bytes())
    old = tmp / "exported-before-fp16"  # a model directory from before provq-export wrote FP16 files
    old.mkdir()
    data = dict(load_manifest("default").data)
    data["files"] = {"fp32": data["files"]["fp32"]}
    data.pop("model_of_record")  # recorded later than the FP16 files
    for name in data["files"]["fp32"].values():
        (old / name).write_bytes((load_manifest("default").directory / name).read_bytes())
    (old / "manifest.json").write_text(json.dumps(data))
    cases = {
        "missing file": ([str(tmp / "nope.mp4")], "does not exist"),
        "corrupt video": ([str(tmp / "bad.mp4")], "corrupt"),
        "unknown scheme": (["foo://bar"], "unknown input scheme"),
        "missing camera": (["/dev/video99"], "not found"),
        "model missing files": (["sample://", "--model", str(tmp / "model")], "encoder.onnx is missing"),
        "tokens folder missing": (["sample://", "--tokens", str(tmp / "no" / "t.ptok")], "does not exist"),
        "tokens exist": (["sample://", "--tokens", str(tmp / "old.ptok")], "already exists"),
        "output not a video": (["sample://", str(tmp / "notes.mp4")], "is not a video"),
        "output type": (["sample://", str(tmp / "out.txt")], "unknown OUTPUT type"),
        "no fp16 files": (["sample://", "--model", str(old), "--precision", "fp16"], "has no FP16 files"),
        "stable on tensorrt": (["sample://", "--backend", "tensorrt", "--stable-tokens"], "native TensorRT engines"),
    }
    if gui_backend() is None:
        cases["no GUI"] = (["sample://", "display://0"], "--headless")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        cases["no tensorrt"] = (["sample://", "--backend", "tensorrt"], "tensorrt is not installed")
    if tokenstream.zstandard is None:
        cases["no zstandard"] = (["sample://", "--codec", "zstd"], "zstandard")
    return cases


def test_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, (args, phrase) in _bad_inputs(tmp_path).items():
        assert run_main(args) == 2, name
        line = one_error_line(capsys, "provq-run")
        assert phrase in line, (name, line)


def test_decode_refuses_a_stream_from_another_codebook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = load_manifest("default")
    foreign = StreamHeader("ab" * 32, manifest.codebook_size, 12, 20, 90, 160, 96, 160, fps=25.0)
    with TokenStreamWriter(tmp_path / "f.ptok", foreign) as writer:
        writer.write(np.zeros((12, 20), np.int32), 0.0)
    assert decode_main([str(tmp_path / "f.ptok"), str(tmp_path / "dec")]) == 2
    assert "codebook abababababab" in one_error_line(capsys, "provq-decode")
    assert not (tmp_path / "dec").exists()
    (tmp_path / "text.ptok").write_text("hello")
    for path in (tmp_path / "missing.ptok", tmp_path / "text.ptok"):
        assert decode_main([str(path), str(tmp_path / "dec")]) == 2
        one_error_line(capsys, "provq-decode")


@pytest.fixture(scope="module")
def three_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 frames at 96 x 54: chunks of 30, 30 and 15 frames."""
    path = tmp_path_factory.mktemp("chunks") / "t.ptok"
    assert run_main(["sample://", "--input-width", "96", "--max-frames", "75", "--tokens", str(path)]) == 0
    return path


def test_decode_skips_a_damaged_chunk_and_names_it(
    three_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(three_chunks.read_bytes())
    second = data.find(b"PTKC", data.find(b"PTKC") + 1)
    data[second + tokenstream.CHUNK_HEADER_SIZE + 3] ^= 0xFF  # a payload byte: the payload CRC fails
    damaged = tmp_path / "damaged.ptok"
    damaged.write_bytes(bytes(data))
    assert decode_main([str(damaged), str(tmp_path / "dec")]) == 1
    assert "chunk 1 (payload CRC mismatch" in one_error_line(capsys, "provq-decode")
    assert len(list((tmp_path / "dec").glob("*.png"))) == 45


def test_decode_of_a_torn_tail_decodes_every_complete_chunk(
    three_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torn = tmp_path / "torn.ptok"
    torn.write_bytes(three_chunks.read_bytes()[:-10])
    assert decode_main([str(torn), str(tmp_path / "dec.mkv")]) == 0
    assert "torn chunk" in capsys.readouterr().err
    frames = read_video(tmp_path / "dec.mkv")
    assert len(frames) == 60 and frames[0].shape == (54, 96, 3)


def test_int8_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample://", str(tmp_path / "rec"), "--precision", "int8", "--input-width", "240", "--max-frames", "2"]
    assert run_main([*args, "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["precision"] == "int8" and s["frames"] == 2 and s["psnr_db"] > 20
    assert len(read_pngs(tmp_path / "rec")) == 2
    assert "note: an INT8 encoder keeps" in capsys.readouterr().err  # and says how to keep FP32's ids


def test_fp16_encoder_with_int8_decoder_on_onnx_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--input-width", "240", "--max-frames", "3", "--backend", "onnxruntime"]
    assert run_main(["sample://", *common, "--tokens", str(tmp_path / "fp32.ptok")]) == 0
    split = ["--precision", "int8", "--encoder-precision", "fp16", "--tokens", str(tmp_path / "split.ptok")]
    assert run_main(["sample://", str(tmp_path / "rec"), *common, *split, "--json", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    assert "encoder fp16 + decoder int8" in err and "note: an INT8 encoder" not in err
    with TokenStreamReader(tmp_path / "fp32.ptok") as a, TokenStreamReader(tmp_path / "split.ptok") as b:
        ids32 = np.stack([f.ids for f in a.frames()])
        ids16 = np.stack([f.ids for f in b.frames()])
    assert ids32.shape == ids16.shape and (ids32 == ids16).mean() >= 0.98
    assert json.loads((tmp_path / "s.json").read_text())["psnr_db"] > 20


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for main in (run_main, decode_main):
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0 and "Examples:" in capsys.readouterr().out
