"""Training runs: ProVQ phases, exact resume, NaN handling, atomic checkpoints, data-parallel under torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from provq.train import checkpoint
from provq.train import trainer as trainer_module
from provq.train.errors import ProvqError
from provq.train.trainer import Diverged, TrainConfig, Trainer, train


def _fast(photo_dir: Path, out: Path, **overrides: object) -> TrainConfig:
    """A run of a few seconds on 96 px photos: 32 px crops, small k-means, 64 px validation."""
    cfg = TrainConfig(
        data=str(photo_dir),
        out=str(out),
        steps=12,
        warmup_steps=4,
        transition_steps=4,
        batch_size=4,
        crop=32,
        kmeans_points=2048,
        val_size=64,
        eval_every=6,
        device="cpu",
        workers=0,
        progress=False,
    )
    return replace(cfg, **overrides)


def test_provq_run_writes_checkpoint_and_metrics(photo_dir: Path, tmp_path: Path) -> None:
    metrics = train(_fast(photo_dir, tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("psnr_db", "ssim", "codebook_usage", "perplexity", "steps", "seconds"):
        assert key in written
    assert written["steps"] == 12 and written["psnr_db"] == pytest.approx(metrics["psnr_db"])
    assert 0 < written["codebook_usage"] <= 1 and 1 <= written["perplexity"] <= 1024
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert state["step"] == 12 and state["preset"] == "tiny"
    assert state["schedule"] == {
        "kind": "provq",
        "warmup_steps": 4,
        "transition_steps": 4,
        "curve": "cosine",
        "lam": 0.5,
    }
    assert bool(state["model"]["quantizer.initialized"])
    assert [h["step"] for h in written["history"]] == [6, 12]


def test_kmeans_initialises_codebook_from_warmed_latents(photo_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(_fast(photo_dir, tmp_path / "km"))
    before = trainer.model.quantizer.codebook.detach().clone()
    assert not bool(trainer.model.quantizer.initialized)
    trainer.init_codebook()
    after = trainer.model.quantizer.codebook.detach()
    assert bool(trainer.model.quantizer.initialized) and not torch.equal(before, after)
    x = trainer.data.batch(0, 4)
    with torch.no_grad():
        ids = trainer.model.encode(x)
    # k-means centroids lie among the latents: a batch already uses many distinct codes, unlike a random codebook
    assert ids.unique().numel() > 20


def test_resume_continues_exactly(photo_dir: Path, tmp_path: Path) -> None:
    whole = Trainer(_fast(photo_dir, tmp_path / "whole", batch_size=3))
    epoch = whole.data.shard_size
    assert epoch < 12 * 3 and (6 * 3) % epoch != 0  # several epochs, and step 6 stops in the middle of one
    whole.run()
    # the interrupted run reads through 2 DataLoader workers, the uninterrupted one in-process
    first = Trainer(_fast(photo_dir, tmp_path / "split", batch_size=3, stop_at=6, workers=2))  # in the transition
    first.run()
    resumed = Trainer(
        _fast(photo_dir, tmp_path / "split", batch_size=3, workers=2, resume=str(tmp_path / "split" / "last.pt"))
    )
    assert resumed.step == 6 and resumed.schedule == whole.schedule
    resumed.run()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    exp_avg = [s["exp_avg"] for s in whole.optimizer.state_dict()["state"].values()]
    got = [s["exp_avg"] for s in resumed.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(exp_avg, got, strict=True))


def test_existing_run_is_not_overwritten(photo_dir: Path, tmp_path: Path) -> None:
    train(_fast(photo_dir, tmp_path / "run", steps=2, warmup_steps=1, transition_steps=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ProvqError, match="already exists"):
        Trainer(_fast(photo_dir, tmp_path / "run"))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_hard_baseline_starts_quantized(photo_dir: Path, tmp_path: Path) -> None:
    cfg = _fast(photo_dir, tmp_path / "hard", schedule="hard", warmup_steps=None, transition_steps=None, steps=3)
    trainer = Trainer(cfg)
    assert bool(trainer.model.quantizer.initialized) and trainer.schedule.alpha(0) == 0.0
    result = trainer.train_step(trainer.data.batch(0, 4))
    assert result is not None and result["ids"] is not None


def test_budget_smaller_than_warmup_plus_transition_is_refused(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ProvqError, match="exceed --steps"):
        Trainer(_fast(photo_dir, tmp_path / "x", steps=6, warmup_steps=4, transition_steps=4))


def test_non_finite_steps_are_skipped_and_counted(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer_module.reconstruction_loss
    calls = {"n": 0}

    def sometimes_nan(reconstruction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
        calls["n"] += 1
        loss = real(reconstruction, target, kind)
        return loss * float("nan") if calls["n"] in (2, 3, 7) else loss  # fault injection

    monkeypatch.setattr(trainer_module, "reconstruction_loss", sometimes_nan)
    trainer = Trainer(_fast(photo_dir, tmp_path / "nan", steps=8, warmup_steps=2, transition_steps=2))
    weights = next(trainer.model.encoder.parameters()).detach().clone()
    trainer.step = 0
    trainer.train_step(trainer.data.batch(0, 4))
    after_good = next(trainer.model.encoder.parameters()).detach().clone()
    assert not torch.equal(weights, after_good)
    assert trainer.train_step(trainer.data.batch(1, 4)) is None  # NaN: skipped, weights untouched
    assert torch.equal(next(trainer.model.encoder.parameters()).detach(), after_good)
    trainer.step = 0
    calls["n"] = 0
    metrics = trainer.run()
    assert metrics["nan_steps_skipped"] == 3  # calls 2, 3 and 7 of the run
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_too_many_non_finite_steps_stop_with_a_clear_error(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "reconstruction_loss", lambda r, t, k: (r - t).mean() * float("inf"))
    with pytest.raises(Diverged, match="lower --lr"):
        train(_fast(photo_dir, tmp_path / "div", max_nan_steps=3))
    state = checkpoint.load(tmp_path / "div" / "last.pt")  # still a complete, readable checkpoint
    assert state["nan_steps"] == 3


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": 1, "step": 1}, path)
    before = path.read_bytes()

    def crash(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "provq.train.cli", "--data", str(photo_dir), "--out", str(out), "--steps", "10",
        "--warmup-steps", "3", "--transition-steps", "3", "--batch-size", "2", "--crop", "32", "--val-size", "64",
        "--eval-every", "5", "--device", "cpu", "--restart-dead-codes-every", "4",
        "--kmeans-points", "2048", "--no-progress",
    ]  # fmt: skip
    done = run_with_stacks_on_timeout(cmd, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("provq-train: done in") == 1  # rank 0 reports for both
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    codebooks, models = metrics["rank_sha256"]["codebook"], metrics["rank_sha256"]["model"]
    assert len(codebooks) == 2 and codebooks[0] == codebooks[1]
    assert models[0] == models[1]
    state = checkpoint.load(out / "last.pt")
    assert bool(state["model"]["quantizer.initialized"])
    # the ranks read disjoint halves of the training samples, and together all of them
    reads = metrics["rank_data"]
    assert [r["rank"] for r in reads] == [0, 1]
    train_samples = reads[0]["train_samples"]
    read = [set(r["read_first"]) for r in reads]
    assert all(len(ids) == r["distinct_read"] == r["shard_samples"] for ids, r in zip(read, reads, strict=True))
    assert not read[0] & read[1] and read[0] | read[1] == set(range(train_samples))


def run_with_stacks_on_timeout(cmd: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; past ``timeout`` it and every process under it get SIGABRT, which Python's faulthandler answers
    with each thread's stack on stderr, and the test fails showing them (torchrun starts each rank in a session of
    its own, so the tree is walked through /proc rather than signalled as one process group)."""
    # gloo over the loopback interface, whatever the host name resolves to
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "GLOO_SOCKET_IFNAME": "lo"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*_descendants(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)
            out, err = process.communicate(timeout=60)
            pytest.fail(f"no result in {timeout:.0f} s; the stacks of its processes:\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def _descendants(root: int) -> list[int]:
    """Process ids under ``root``, deepest first, from the parent ids in /proc/PID/stat."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found = frontier + found
    return found
