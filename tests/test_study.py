"""provq-study: one-line user errors, determinism, the JSON and plot it writes, and the peer quantizers' contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from provq.train import peer_quantizers
from provq.train.errors import ProvqError
from provq.train.presets import preset
from provq.train.study import METHODS, StudyConfig, format_table, parse_methods, run_study
from provq.train.trainer import TrainConfig, Trainer

pytest.importorskip("vector_quantize_pytorch")

FAST = ["--steps", "4", "--batch-size", "2", "--crop", "32", "--val-size", "64",
        "--kmeans-points", "1024", "--eval-every", "2", "--no-progress"]  # fmt: skip


def _fast_study(photo_dir: Path, out: Path, **overrides: object) -> StudyConfig:
    """A study of a few seconds per method: 4 steps of 2 crops of 32 px, 64 px validation, small k-means."""
    study = StudyConfig(
        data=str(photo_dir),
        out=str(out),
        steps=4,
        seeds=1,
        batch_size=2,
        crop=32,
        kmeans_points=1024,
        eval_every=2,
        val_size=64,
        progress=False,
    )
    return replace(study, **overrides)


def provq_study(*args: str, block: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run provq-study in a fresh interpreter; ``block`` makes that module unimportable there."""
    prelude = f"sys.modules[{block!r}] = None; " if block else ""
    code = f"import sys; {prelude}from provq.train.study import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, check=False)


def assert_user_error(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit code 2, exactly one line on stderr starting 'provq-study: error:', no traceback."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("provq-study: error:") and "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _figures(result: dict) -> dict:
    """Everything measured except wall-clock seconds."""
    return {
        name: [{k: v for k, v in r.items() if k != "seconds"} for r in summary["per_seed"]]
        for name, summary in result["methods"].items()
    }


def test_unknown_method(photo_dir: Path, tmp_path: Path) -> None:
    done = provq_study("--data", str(photo_dir), "--methods", "hard,soft-vq", "--out", str(tmp_path / "o"))
    assert_user_error(done, "unknown method 'soft-vq'", "kmeans-restart")
    assert not (tmp_path / "o").exists()


def test_budget_too_small_for_warmup_and_transition(photo_dir: Path, tmp_path: Path) -> None:
    done = provq_study(
        "--data", str(photo_dir), "--steps", "10", "--warmup-steps", "8", "--transition-steps", "5",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_user_error(done, "warm-up (8) + transition (5)", "--steps 10")


@pytest.mark.parametrize(
    ("module", "methods", "extra", "hint"),
    [
        ("vector_quantize_pytorch", "hard,vqtorch", [], "pip install vector-quantize-pytorch"),
        ("vector_quantize_pytorch", "fsq", [], "pip install vector-quantize-pytorch"),
        ("matplotlib", "hard", ["--plot", "p.png"], "pip install matplotlib"),
    ],
)
def test_missing_optional_dependency(photo_dir: Path, module: str, methods: str, extra: list[str], hint: str) -> None:
    done = provq_study("--data", str(photo_dir), "--methods", methods, *extra, block=module)
    assert_user_error(done, hint)


def test_earlier_run_is_not_overwritten(photo_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "o" / "hard" / "seed-0").mkdir(parents=True)
    (tmp_path / "o" / "hard" / "seed-0" / "last.pt").write_bytes(b"")
    assert_user_error(provq_study("--data", str(photo_dir), "--out", str(tmp_path / "o")), "earlier run")


def test_parse_methods() -> None:
    assert parse_methods("all") == METHODS
    assert parse_methods("provq, hard,provq") == ("provq", "hard")
    with pytest.raises(ProvqError, match="unknown method"):
        parse_methods(",")


def test_same_figures_twice(photo_dir: Path, tmp_path: Path) -> None:
    first = run_study(_fast_study(photo_dir, tmp_path / "a"), log=lambda _line: None)
    second = run_study(_fast_study(photo_dir, tmp_path / "b"), log=lambda _line: None)
    assert list(first["methods"]) == list(METHODS)
    assert _figures(first) == _figures(second)


def test_json_table_and_plot(photo_dir: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "o", tmp_path / "plot.png"
    done = provq_study(
        "--data", str(photo_dir), "--methods", "hard,provq", "--seeds", "2", "--out", str(out),
        "--plot", str(plot), *FAST,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "method" in done.stdout and "provq" in done.stdout and " ± " in done.stdout
    result = json.loads((out / "study.json").read_text())
    assert set(result) == {"methods", "config"} and list(result["methods"]) == ["hard", "provq"]
    for summary in result["methods"].values():
        for key in ("psnr_db", "ssim", "codebook_usage", "perplexity", "seconds"):
            assert isinstance(summary[key], float) and isinstance(summary["std"][key], float)
        assert [r["seed"] for r in summary["per_seed"]] == [0, 1]
        for record in summary["per_seed"]:
            assert 0 < record["codebook_usage"] <= 1 and [h["step"] for h in record["history"]] == [2, 4]
    assert result["config"]["steps"] == 4 and result["config"]["provq_schedule"]["warmup_steps"] == 1
    assert (out / "provq" / "seed-1" / "metrics.json").is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_single_seed_without_spread() -> None:
    figures = {"psnr_db": 20.0, "ssim": 0.5, "codebook_usage": 0.9, "perplexity": 700.0, "seconds": 3.0}
    result = {"methods": {"provq": {**figures, "std": dict.fromkeys(figures), "per_seed": []}}}
    table = format_table(result)
    assert "20.00" in table and "±" not in table


@pytest.mark.parametrize("name", peer_quantizers.PEERS)
def test_peer_ids_codes_ids_round_trip(name: str) -> None:
    cfg = peer_quantizers.fit_model_config(name, preset("tiny"))
    quantizer = peer_quantizers.build(name, cfg)
    if name == "vqtorch":  # distinct codes (k-means would set them on the first training batch)
        quantizer.vq.codebook = torch.randn(cfg.codebook_size, cfg.code_dim, generator=torch.Generator().manual_seed(0))
    for shape in [(7,), (2, 3, 5), (1, 8, 8)]:
        ids = torch.randint(quantizer.codebook_size, shape, dtype=torch.int32)
        codes = quantizer.lookup(ids)
        assert codes.shape == (*shape, cfg.code_dim) and codes.dtype == torch.float32
        back = quantizer.nearest(codes) if name == "vqtorch" else quantizer.fsq.codes_to_indices(codes)
        assert torch.equal(back, ids)
    assert torch.equal(quantizer.lookup(torch.arange(quantizer.codebook_size)), quantizer.codebook)


@pytest.mark.parametrize("name", peer_quantizers.PEERS)
def test_peer_forward_matches_encode_decode(name: str) -> None:
    cfg = peer_quantizers.fit_model_config(name, preset("tiny"))
    quantizer = peer_quantizers.build(name, cfg)
    z = torch.randn(2, cfg.code_dim, 4, 6, requires_grad=True)
    out = quantizer(z, 0.0)  # training: vqtorch sets its codebook by k-means on these latents
    assert out.ids.shape == (2, 4, 6) and out.ids.dtype == torch.int32
    assert bool(quantizer.initialized) and quantizer.codebook_size == cfg.codebook_size
    out.decoder_input.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # straight-through / rotation-trick gradients reach z
    assert torch.equal(quantizer(z.detach(), 1.0).decoder_input, z.detach())  # alpha = 1: continuous
    quantizer.eval()
    if name == "vqtorch":  # distinct codes: k-means on 48 latents for 1024 codes left near-twins
        quantizer.vq.codebook = torch.randn(cfg.codebook_size, cfg.code_dim, generator=torch.Generator().manual_seed(0))
    hard = quantizer(z.detach(), 1.0)  # eval is always hard
    assert torch.equal(hard.ids, quantizer.nearest(z.detach().permute(0, 2, 3, 1)))
    assert torch.equal(hard.decoder_input, quantizer.lookup(hard.ids).permute(0, 3, 1, 2))


def test_peers_share_the_encoder_and_decoder_initialisation(photo_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(photo_dir), crop=32, schedule="hard", device="cpu", progress=False)
    own = Trainer(replace(cfg, out=str(tmp_path / "vq"))).model.state_dict()
    peer = Trainer(replace(cfg, out=str(tmp_path / "peer"), quantizer="vqtorch")).model.state_dict()
    shared = [k for k in own if not k.startswith("quantizer.")]
    assert shared and all(torch.equal(own[k], peer[k]) for k in shared)


def test_trainer_rejects_peers_outside_the_hard_schedule(photo_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(photo_dir), out=str(tmp_path / "o"), crop=32, device="cpu", quantizer="fsq")
    with pytest.raises(ProvqError, match="hard schedule"):
        Trainer(cfg)
    with pytest.raises(ProvqError, match="unknown quantizer"):
        Trainer(replace(cfg, quantizer="rq"))


def test_code_dim_sets_every_vq_method_and_leaves_fsq_its_levels(photo_dir: Path, tmp_path: Path) -> None:
    study = _fast_study(photo_dir, tmp_path / "s", code_dim=4)
    from provq.train.study import train_config

    dims = {m: Trainer(train_config(study, m, 0)).model_cfg.code_dim for m in ("hard", "provq", "vqtorch", "fsq")}
    assert dims == {"hard": 4, "provq": 4, "vqtorch": 4, "fsq": 4}  # fsq: len((8, 5, 5, 5)), its own levels
    assert Trainer(train_config(_fast_study(photo_dir, tmp_path / "d"), "provq", 0)).model_cfg.code_dim == 8
    done = provq_study("--data", str(photo_dir), "--out", str(tmp_path / "bad"), "--code-dim", "0", *FAST)
    assert_user_error(done, "--code-dim must be a positive integer")


def test_provq_restart_every_adds_dead_code_restarts_to_provq_only(photo_dir: Path, tmp_path: Path) -> None:
    from provq.train.study import train_config

    study = _fast_study(photo_dir, tmp_path / "s", provq_restart_every=20, restart_every=30)
    assert train_config(study, "provq", 0).restart_dead_codes_every == 20
    assert train_config(study, "kmeans-restart", 0).restart_dead_codes_every == 30
    assert train_config(_fast_study(photo_dir, tmp_path / "d"), "provq", 0).restart_dead_codes_every == 0
    done = provq_study("--data", str(photo_dir), "--out", str(tmp_path / "bad"), "--provq-restart-every", "-1", *FAST)
    assert_user_error(done, "--provq-restart-every must be 0 (off) or a positive integer")
