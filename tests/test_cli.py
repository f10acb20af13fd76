"""provq-train as a user runs it: real subprocesses, exit codes and one-line errors without tracebacks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

FAST = ["--steps", "4", "--warmup-steps", "1", "--transition-steps", "1", "--batch-size", "2", "--crop", "32",
        "--val-size", "64", "--eval-every", "2", "--kmeans-points", "2048", "--device", "cpu",
        "--no-progress"]  # fmt: skip


def provq_train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provq.train.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_user_error(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Non-zero exit, exactly one line on stderr starting 'provq-train: error:', no traceback."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("provq-train: error:") and "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_help_lists_examples() -> None:
    done = provq_train("--help")
    assert done.returncode == 0 and "--resume" in done.stdout and "torchrun" in done.stdout


def test_missing_folder(tmp_path: Path) -> None:
    assert_user_error(provq_train("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(
        provq_train("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")), "no images or videos"
    )


def test_unreadable_images(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.jpg", "b.png"):
        (bad / name).write_bytes(b"\xff\xd8 this is not an image")
    assert_user_error(provq_train("--data", str(bad), "--out", str(tmp_path / "o")), "could be decoded")


def test_corrupt_video(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    assert_user_error(
        provq_train("--data", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "o")), "could not decode"
    )


def test_frames_smaller_than_the_crop_are_upscaled(photo_dir: Path, tmp_path: Path) -> None:
    args = [*FAST, "--steps", "2", "--warmup-steps", "1", "--transition-steps", "1"]
    done = provq_train("--data", str(photo_dir), *args, "--crop", "128", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    summary = [line for line in done.stderr.splitlines() if line.startswith("data:")]
    # the 96 px photos are upscaled for every crop of the 2 steps x 2 slots and the k-means batch of 32
    assert summary == ["data: upscaled 36 frame(s) smaller than --crop 128"]


def test_missing_shard(tmp_path: Path) -> None:
    done = provq_train("--data", str(tmp_path / "shards" / "{000..003}.tar"), "--out", str(tmp_path / "o"))
    assert_user_error(done, "000.tar does not exist", "4 of 4 missing")


def test_negative_workers(photo_dir: Path, tmp_path: Path) -> None:
    assert_user_error(
        provq_train("--data", str(photo_dir), "--workers", "-1", "--out", str(tmp_path / "o")), "--workers"
    )


def test_crop_not_a_multiple_of_downsample(photo_dir: Path, tmp_path: Path) -> None:
    assert_user_error(
        provq_train("--data", str(photo_dir), "--crop", "30", "--out", str(tmp_path / "o")), "multiple of"
    )


def test_missing_perceptual_weights(photo_dir: Path, tmp_path: Path) -> None:
    weights = str(tmp_path / "vgg16.pth")
    done = provq_train("--data", str(photo_dir), "--perceptual-weights", weights, "--out", str(tmp_path / "o"), *FAST)
    assert_user_error(done, "vgg16.pth")


def test_corrupt_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    assert_user_error(
        provq_train("--data", str(photo_dir), "--resume", str(ckpt), "--out", str(tmp_path / "o")), "corrupt"
    )


def test_foreign_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, ckpt)
    assert_user_error(
        provq_train("--data", str(photo_dir), "--resume", str(ckpt), "--out", str(tmp_path / "o")),
        "not a provq checkpoint",
    )


class Payload:
    """A pickled object: loading it would run code, so safe loading must refuse it."""

    def __reduce__(self) -> tuple:
        return (print, ("payload executed",))


def test_pickled_payload_is_refused(photo_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "evil.pt"
    torch.save({"format": "provq-checkpoint", "x": Payload()}, ckpt)
    done = provq_train("--data", str(photo_dir), "--resume", str(ckpt), "--out", str(tmp_path / "o"))
    assert_user_error(done, "weights_only")
    assert "payload executed" not in done.stdout + done.stderr


def test_train_then_resume_through_the_cli(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = provq_train("--data", str(photo_dir), "--out", str(out), *FAST, "--stop-at", "2")
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    again = provq_train("--data", str(photo_dir), "--out", str(out), *FAST)
    assert_user_error(again, "already exists", "--resume")
    resumed = provq_train("--data", str(photo_dir), "--out", str(out), *FAST, "--resume", str(out / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and "val PSNR" in resumed.stdout


@pytest.mark.slow
def test_default_checkpoint_fine_tunes_on_unseen_photos(unseen_photo_dir: Path, tmp_path: Path) -> None:
    from provq.train import checkpoint

    shipped_step = checkpoint.load("default")["step"]  # --steps counts from the checkpoint's own step
    steps = ["--steps", str(shipped_step + 4)]
    done = provq_train(
        "--data", str(unseen_photo_dir), "--resume", "default", "--out", str(tmp_path / "ft"), *FAST, *steps
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["steps"] == shipped_step + 4 and metrics["psnr_db"] > 18.0


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_that_resumes(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data", str(photo_dir), "--out", str(out), *FAST, "--checkpoint-every", "2"]
    args[args.index("--steps") + 1] = "100000"
    proc = subprocess.Popen(
        [sys.executable, "-m", "provq.train.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "last.pt").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    from provq.train import checkpoint

    state = checkpoint.load(out / "last.pt")
    assert state["step"] > 0
    resumed = provq_train(*args, "--resume", str(out / "last.pt"), "--stop-at", str(state["step"] + 1))
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(out / "last.pt")["step"] == state["step"] + 1
