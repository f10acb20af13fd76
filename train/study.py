"""``provq-study``: ProVQ against hard VQ and vector-quantize-pytorch, side by side on the same model, data and steps.

Examples:
    provq-study --data sample --steps 600 --seeds 2 --out runs/study --plot runs/study/study.png
    provq-study --data ~/photos --val ~/val_photos --steps 2000 --methods hard,provq --out runs/s2
    provq-study --data train/ --val val/ --val-size 512 --steps 1000 --json study.json --no-progress

Every method trains the same tiny/small/base encoder and decoder for the same number of steps (ProVQ's continuous
warm-up and transition count inside that budget) on the same batches, crops and flips (a pure function of seed and
step), with the same learning-rate schedule and commitment weight, and is evaluated on the same validation frames
with hard quantization. For a given seed the encoder starts from the same weights under every method; the decoder
too, except for fsq, whose latents have len(levels) channels. Seeds are 0 .. --seeds - 1.

Methods:
    hard            random codebook, hard VQ from step 0 (the premature-discretization baseline)
    kmeans-restart  hard VQ from step 0, codebook set by k-means on the untrained encoder's latents, codes unused
                    for --restart-every steps moved onto live latents
    vqtorch         vector-quantize-pytorch's VectorQuantize: k-means init, EMA codebook, dead-code expiry,
                    rotation trick (pip install vector-quantize-pytorch)
    fsq             vector-quantize-pytorch's FSQ with the FSQ paper's levels for the codebook size (8,5,5,5 = 1000
                    codes for tiny)
    provq           ours: continuous warm-up, k-means, cosine blend to hard VQ with the loss ramp
                    (--provq-restart-every N adds kmeans-restart's dead-code restarts to it; off by default)

Output: a table on screen, --json (default OUT/study.json), and with --plot a PNG of validation PSNR and codebook
usage against steps. Each run's checkpoint and metrics.json are in OUT/METHOD/seed-N/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from provq.edge_runtime.formats.versions import package_versions

from . import commands, peer_quantizers
from .commands import Option
from .errors import ProvqError
from .presets import PRESETS
from .trainer import TrainConfig, train

PROG = "provq-study"
METHODS = ("hard", "kmeans-restart", "vqtorch", "fsq", "provq")
FIGURES = ("psnr_db", "ssim", "codebook_usage", "perplexity", "seconds")
PER_SEED = ("psnr_db", "ssim", "codebook_usage", "perplexity", "psnr_continuous_db", "seconds")


@dataclass(frozen=True)
class StudyConfig:
    """One study: the shared training set-up and the methods to compare; defaults say what they mean."""

    data: str = "sample"  # folder, video file or "sample"
    val: str | None = None  # separate validation source; default: hold out part of --data
    out: str = "runs/study"  # OUT/METHOD/seed-N/ holds each run's last.pt and metrics.json
    methods: tuple[str, ...] = METHODS
    preset: str = "tiny"
    code_dim: int | None = None  # codebook vector dimension of every VQ method; default: the preset's (fsq: its levels)
    steps: int = 1000  # total optimizer steps of every method (ProVQ's warm-up and transition included)
    seeds: int = 2  # runs per method, with seeds 0 .. seeds - 1
    batch_size: int = 16
    crop: int = 64
    lr: float = 1e-3
    warmup_steps: int | None = None  # ProVQ's continuous warm-up; default 20% of steps
    transition_steps: int | None = None  # ProVQ's continuous -> discrete blend; default 30% of steps
    lam: float = 0.5  # ProVQ's VQ-loss weight at the start of the transition
    restart_every: int = 50  # kmeans-restart: restart codes unused for this many steps
    provq_restart_every: int = 0  # provq: the same dead-code restarts on top of ProVQ (not in the paper); 0 = off
    kmeans_points: int = 0  # latents for the k-means inits (provq, kmeans-restart); 0 = 20 x codebook size
    eval_every: int | None = None  # validation interval; default steps / 10
    val_size: int = 256  # validation frames are centre-cropped to at most this size
    val_frames: int = 256  # at most this many validation frames, spread evenly over the validation set
    device: str = "cpu"  # cpu, cuda or auto
    progress: bool = True


# StudyConfig fields that every method's TrainConfig takes as they are.
SHARED_FIELDS = (
    "data",
    "val",
    "preset",
    "code_dim",
    "steps",
    "batch_size",
    "crop",
    "lr",
    "lam",
    "kmeans_points",
    "val_size",
    "val_frames",
    "device",
    "progress",
)


def parse_methods(text: str) -> tuple[str, ...]:
    """Comma-separated method names (or 'all') -> a tuple in the given order, duplicates dropped."""
    names = METHODS if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ProvqError(f"unknown method {unknown[0] if unknown else text!r}: choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


def train_config(study: StudyConfig, method: str, seed: int) -> TrainConfig:
    """The trainer's configuration of one method and seed: everything but the quantizer is shared."""
    shared = TrainConfig(
        **{name: getattr(study, name) for name in SHARED_FIELDS},
        out=str(run_dir(study, method, seed)),
        eval_every=study.eval_every or max(1, study.steps // 10),
        checkpoint_every=study.steps,
        seed=seed,
    )
    if method == "provq":
        return replace(
            shared,
            warmup_steps=study.warmup_steps,
            transition_steps=study.transition_steps,
            restart_dead_codes_every=study.provq_restart_every,
        )
    if method == "kmeans-restart":
        return replace(shared, warmup_steps=0, transition_steps=0, restart_dead_codes_every=study.restart_every)
    quantizer = {"hard": "vq", "vqtorch": "vqtorch", "fsq": "fsq"}[method]
    return replace(shared, schedule="hard", quantizer=quantizer)


def run_dir(study: StudyConfig, method: str, seed: int) -> Path:
    return Path(study.out) / method / f"seed-{seed}"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked by sys.modules[name] = None
        return False


def check(study: StudyConfig, plot: str | None) -> None:
    """Every user error that can be seen before training, as one-line ProvqErrors (nothing trains on a bad set-up)."""
    parse_methods(",".join(study.methods))
    for name in ("steps", "seeds", "batch_size", "restart_every"):
        if getattr(study, name) <= 0:
            raise ProvqError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(study, name)}")
    if study.provq_restart_every < 0:
        value = study.provq_restart_every
        raise ProvqError(f"--provq-restart-every must be 0 (off) or a positive integer, got {value}")
    if study.code_dim is not None and study.code_dim <= 0:
        raise ProvqError(f"--code-dim must be a positive integer, got {study.code_dim}")
    if study.eval_every is not None and study.eval_every <= 0:
        raise ProvqError(f"--eval-every must be a positive integer, got {study.eval_every}")
    if study.preset not in PRESETS:
        raise ProvqError(f"unknown preset {study.preset!r}: choose one of {', '.join(PRESETS)}")
    if "provq" in study.methods:
        schedule = train_config(study, "provq", 0).make_schedule()
        if schedule.hard_from > study.steps:
            raise ProvqError(
                f"ProVQ's warm-up ({schedule.warmup_steps}) + transition ({schedule.transition_steps}) steps exceed "
                f"--steps {study.steps}: raise --steps or shorten them"
            )
    if {"vqtorch", "fsq"} & set(study.methods):
        peer_quantizers.library()
    if "fsq" in study.methods:
        peer_quantizers.fsq_levels(PRESETS[study.preset].codebook_size)
    if plot is not None and not _installed("matplotlib"):
        raise ProvqError("--plot needs matplotlib: pip install matplotlib (or pip install 'provq[study]')")
    for method in study.methods:
        for seed in range(study.seeds):
            if (run_dir(study, method, seed) / "last.pt").exists():
                raise ProvqError(f"{run_dir(study, method, seed)} holds an earlier run: choose another --out")


def _spread(values: list[float]) -> float | None:
    """Sample standard deviation over seeds; None for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each figure over seeds, their sample standard deviations under "std", and the per-seed records."""
    summary: dict[str, Any] = {k: statistics.fmean(r[k] for r in per_seed) for k in FIGURES}
    summary["std"] = {k: _spread([r[k] for r in per_seed]) for k in FIGURES}
    summary["per_seed"] = per_seed
    return summary


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__} | package_versions(
        ("provq", "vector-quantize-pytorch")
    )


def run_study(study: StudyConfig, *, plot: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every method for every seed and return the study's JSON payload (see the module docstring)."""
    check(study, plot)
    total = len(study.methods) * study.seeds
    methods: dict[str, Any] = {}
    for i, method in enumerate(study.methods):
        per_seed = []
        for seed in range(study.seeds):
            log(f"{PROG}: [{i * study.seeds + seed + 1}/{total}] {method}, seed {seed}")
            metrics = train(train_config(study, method, seed))
            record = {"seed": seed, **{k: metrics[k] for k in PER_SEED}, "history": metrics["history"]}
            per_seed.append(record)
            log(
                f"{PROG}:   PSNR {record['psnr_db']:.2f} dB, SSIM {record['ssim']:.3f}, "
                f"usage {record['codebook_usage']:.1%}, {record['seconds']:.0f} s"
            )
        methods[method] = summarize(per_seed)
    codebook_size = PRESETS[study.preset].codebook_size
    config = {
        **asdict(study),
        "methods": list(study.methods),
        "provq_schedule": train_config(study, "provq", 0).make_schedule().to_dict(),
        "fsq_levels": list(peer_quantizers.fsq_levels(codebook_size)) if "fsq" in study.methods else None,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "versions": _versions(),
    }
    return {"methods": methods, "config": config}


def format_table(result: dict[str, Any]) -> str:
    """The study as a plain-text table: mean ± sample std over seeds for each method."""

    def cell(summary: dict[str, Any], key: str, fmt: str) -> str:
        std = summary["std"][key]
        return format(summary[key], fmt) + ("" if std is None else " ± " + format(std, fmt))

    columns = (
        ("PSNR dB", "psnr_db", ".2f"),
        ("SSIM", "ssim", ".3f"),
        ("usage", "codebook_usage", ".3f"),
        ("perplexity", "perplexity", ".0f"),
        ("seconds", "seconds", ".0f"),
    )
    rows = [["method", *(c[0] for c in columns)]]
    for name, summary in result["methods"].items():
        rows.append([name, *(cell(summary, key, fmt) for _, key, fmt in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:  # method name left-aligned, figures right-aligned
        lines.append("  ".join([r[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True))]))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_study(result: dict[str, Any], path: str | Path) -> None:
    """PNG of validation PSNR and codebook usage against steps (mean over seeds, band = min..max), with ProVQ's
    warm-up and transition windows shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ProvqError("--plot needs matplotlib: pip install matplotlib (or pip install 'provq[study]')") from None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    panels = (("psnr_db", "validation PSNR (dB)"), ("codebook_usage", "validation codebook usage"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, summary in result["methods"].items():
            histories = [r["history"] for r in summary["per_seed"]]
            steps = [h["step"] for h in histories[0]]
            values = [[h[key] for h in history] for history in histories]
            columns = list(zip(*values, strict=True))  # one tuple of seeds per evaluation step
            mean = [statistics.fmean(v) for v in columns]
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=name)
            low, high = [min(v) for v in columns], [max(v) for v in columns]
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        if "provq" in result["methods"]:
            schedule = result["config"]["provq_schedule"]
            start, end = schedule["warmup_steps"], schedule["warmup_steps"] + schedule["transition_steps"]
            ax.axvspan(0, start, color="0.85", label="ProVQ warm-up")
            ax.axvspan(start, end, color="gold", alpha=0.25, label="ProVQ transition")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    config = result["config"]
    fig.suptitle(
        f"provq-study: {config['preset']}, {config['steps']} steps, batch {config['batch_size']}, "
        f"crop {config['crop']}, {config['seeds']} seed(s), data {config['data']}",
        fontsize=9,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The flags set from StudyConfig fields, in --help order, before --methods, --json and --plot (see commands.py).
STUDY_OPTIONS = (
    Option("data", "folder of images/videos, one video, or 'sample' (default: %(default)s)"),
    Option("val", "validation folder/file (default: hold out part of --data)"),
    Option("out", "folder for each run's files (default: %(default)s)"),
    commands.PRESET,
    commands.CODE_DIM,
    Option("steps", "optimizer steps per run (default: %(default)s)"),
    Option("seeds", "runs per method (default: %(default)s)"),
    Option("batch_size", "(default: %(default)s)"),
    commands.CROP,
    commands.LR,
    Option("warmup_steps", "ProVQ warm-up (default: 20%% of --steps)"),
    Option("transition_steps", "ProVQ transition (default: 30%% of --steps)"),
    Option("lam", "ProVQ VQ-loss weight at first (default: %(default)s)"),
    Option("restart_every", "kmeans-restart interval (default: %(default)s)"),
    Option(
        "provq_restart_every",
        "add dead-code restarts at this interval to provq (not in the paper; default: %(default)s = off)",
    ),
    Option("kmeans_points", "0 = 20 x codebook size (default)"),
    Option("eval_every", "validation interval (default: --steps / 10)"),
    commands.VAL_SIZE,
    commands.VAL_FRAMES,
    commands.DEVICE,
    Option("progress", "no progress bars"),
)


def build_parser() -> argparse.ArgumentParser:
    description = "Train the same tokenizer under several quantizers and compare them on the same validation data."
    p = commands.options_parser(PROG, description, __doc__, StudyConfig, STUDY_OPTIONS)
    p.add_argument("--methods", default="all", help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    p.add_argument("--json", default=None, help="study figures as JSON (default: OUT/study.json)")
    p.add_argument("--plot", default=None, help="PNG of PSNR and codebook usage against steps (needs matplotlib)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 130/143 stopped by a signal)."""
    return commands.run_command(PROG, build_parser(), _study, argv, log_level=logging.WARNING)


def _study(args: argparse.Namespace) -> int:
    study = StudyConfig(**commands.option_values(args, STUDY_OPTIONS), methods=parse_methods(args.methods))
    result = run_study(study, plot=args.plot, log=lambda line: print(line, file=sys.stderr, flush=True))
    json_path = Path(args.json or Path(args.out) / "study.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot_study(result, args.plot)
    print(format_table(result))
    print(f"{PROG}: wrote {json_path}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
