"""Train, export and compare tokenizer presets on an equal budget: held-out PSNR against compute and CPU latency.

For each preset NAME (default: ``tiny`` and the cheaper-stem candidates):

1. trains it with ``provq-train --preset NAME --out OUT/NAME`` and the same --data, --val, --steps, --batch-size,
   --crop and --seed (and anything after ``--``) for every preset; an ``OUT/NAME/last.pt`` that has reached --steps
   is reused as it is and a shorter one is resumed, so the trainings can run separately (in parallel, on other
   machines) with the same arguments, and this script then only collects them;
2. exports it with ``provq-export OUT/NAME/last.pt --out OUT/NAME/model`` (reused when it holds that checkpoint);
3. reads the held-out figures from ``OUT/NAME/metrics.json`` (psnr_db, ssim, codebook_usage: provq-train's
   validation on --val) and the compute from the manifest (GMAC per megapixel counted from the ONNX graphs by
   provq.export.macs);
4. times the FP32 ONNX encoder + decoder round trip in ONNX Runtime on the CPU (``--threads`` intra-op threads) at
   each ``--sizes`` W x H: all models in this one process, their runs interleaved (model A, B, C, A, B, C, ...) so
   that load changes on the machine hit every model alike; the median of ``--runs`` after ``--warmup`` runs.

Writes OUT/comparison.json, OUT/comparison.md (a table) and, with matplotlib, OUT/comparison.png (held-out PSNR
against GMAC per megapixel).

    python tools/compare_architectures.py --data ~/photos --val ~/val_photos --steps 3000 --out runs/arch
    python tools/compare_architectures.py --data sample --steps 20 --out /tmp/arch --runs 5   # a quick check
    python tools/compare_architectures.py --untrained --out /tmp/costs   # parameters, GMAC/MP, latency, step time

Exit status 0, or 2 with one line on bad input (an unknown preset, a reused run trained differently).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from provq.edge_runtime import manifest as mf
from provq.edge_runtime.backends import cpu_session
from provq.edge_runtime.console import command_frame
from provq.edge_runtime.preprocess import parse_size
from provq.export.macs import count_macs
from provq.export.onnx_export import export_graphs
from provq.train import checkpoint
from provq.train.errors import ProvqError
from provq.train.model import Tokenizer
from provq.train.presets import PRESETS

CANDIDATES = ("tiny-conv", "tiny-s2d", "tiny-s2d-dcae", "tiny-haar", "tiny-haar-dcae")
BUDGET = ("batch_size", "crop", "seed", "steps")  # what must match for a reused run (TrainConfig fields)


def _train_command(args: argparse.Namespace, name: str, run: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "provq.train.cli", "--data", args.data, "--out", str(run), "--no-progress"]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--crop", str(args.crop)]
    command += ["--seed", str(args.seed)]
    for flag, value in (("--val", args.val), ("--warmup-steps", args.warmup_steps),
                        ("--transition-steps", args.transition_steps)):  # fmt: skip
        if value is not None:
            command += [flag, str(value)]
    command += ["--resume", str(run / "last.pt")] if resume else ["--preset", name]
    return command + args.train_args


def _check_reused(state: dict[str, Any], name: str, args: argparse.Namespace, ckpt: Path) -> None:
    """Refuse a run that is not this preset or was trained on another budget (the comparison would be unequal)."""
    if state.get("preset") != name:
        raise ProvqError(f"{ckpt} is a {state.get('preset')!r} run, not {name!r}: move it or choose another --out")
    trained = state.get("train_config", {})
    for key in BUDGET:
        if key in trained and trained[key] != getattr(args, key):
            raise ProvqError(
                f"{ckpt} was trained with {key} {trained[key]}, this comparison uses {getattr(args, key)}: "
                "pass the same budget or choose another --out"
            )
    if int(state["step"]) > args.steps:
        raise ProvqError(f"{ckpt} is at step {state['step']}, past --steps {args.steps}: choose another --out")


def train(args: argparse.Namespace, name: str) -> Path:
    """OUT/NAME/last.pt at --steps: trained, resumed or reused; returns its path."""
    run = args.out / name
    ckpt = run / "last.pt"
    resume = ckpt.is_file()
    if resume:
        state = checkpoint.load(ckpt)
        _check_reused(state, name, args, ckpt)
        if int(state["step"]) == args.steps and (run / "metrics.json").is_file():
            print(f"{name}: reusing {ckpt} (step {state['step']})", flush=True)
            return ckpt
    if args.no_train:
        raise ProvqError(f"{ckpt} has not reached --steps {args.steps} and --no-train is set: train it first")
    print(f"{name}: training ({'resuming ' if resume else ''}{args.steps} steps) -> {run}", flush=True)
    done = subprocess.run(_train_command(args, name, run, resume), check=False)
    if done.returncode != 0:
        raise ProvqError(f"provq-train failed for {name} (exit {done.returncode}); see its message above")
    return ckpt


def export(ckpt: Path) -> mf.Manifest:
    """OUT/NAME/model exported from ``ckpt`` (reused when its manifest names this checkpoint's sha256)."""
    model_dir = ckpt.parent / "model"
    if (model_dir / mf.NAME).is_file():
        manifest = mf.load_manifest(model_dir)
        same = manifest.data.get("source", {}).get("checkpoint_sha256") == mf.sha256_file(ckpt)
        if same and manifest.gmac_per_megapixel is not None:
            return manifest
    command = [sys.executable, "-m", "provq.export.cli", str(ckpt), "--out", str(model_dir)]
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ProvqError(f"provq-export failed for {ckpt} (exit {done.returncode}); see its message above")
    return mf.load_manifest(model_dir)


Graphs = tuple[Path, Path, int]  # encoder.onnx, decoder.onnx, downsample


def latencies(graphs: dict[str, Graphs], size: tuple[int, int], args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds of one encoder + decoder round trip of a W x H frame, per model, runs interleaved."""
    width, height = size
    frame = np.random.default_rng(0).uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    pairs = {}
    for name, (encoder_path, decoder_path, ds) in graphs.items():
        if height % ds or width % ds:
            raise ProvqError(f"--sizes {width}x{height} is not a multiple of {name}'s downsample {ds}")
        pairs[name] = (cpu_session(encoder_path, threads=args.threads), cpu_session(decoder_path, threads=args.threads))

    def round_trip(name: str) -> float:
        encoder, decoder = pairs[name]
        start = time.perf_counter()
        ids = encoder.run(None, {"images": frame})[0]
        decoder.run(None, {"ids": ids})
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in pairs}
    for repeat in range(args.warmup + args.runs):
        for name in pairs:
            elapsed = round_trip(name)
            if repeat >= args.warmup:
                times[name].append(elapsed)
    return {name: round(1e3 * statistics.median(values), 2) for name, values in times.items()}


def step_seconds(models: dict[str, Tokenizer], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of one training step per model (interleaved): hard-VQ forward on a --batch-size x 3 x --crop
    x --crop batch of random values, L2 + codebook + commitment loss, backward, gradient clipping, AdamW step. The
    trainer's step without data loading or validation; torch on the CPU with --threads threads."""
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    batch = torch.rand(args.batch_size, 3, args.crop, args.crop, generator=generator) * 2 - 1
    runs = {}
    for name, original in models.items():
        model = copy.deepcopy(original).train()
        with torch.no_grad():  # codes on the batch's own latents: the step's cost does not depend on their values
            z = model.latents(batch).permute(0, 2, 3, 1).reshape(-1, model.config.code_dim)
            picks = torch.randint(z.shape[0], (model.config.codebook_size,), generator=generator)
            model.quantizer.codebook.copy_(z[picks])
            model.quantizer.initialized.fill_(True)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))

    def one_step(name: str) -> float:
        model, optimizer = runs[name]
        start = time.perf_counter()
        out = model(batch, 0.0)
        loss = F.mse_loss(out.reconstruction, batch) + out.codebook_loss + model.config.beta * out.commitment_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(1 + args.step_runs):
        for name in runs:
            elapsed = one_step(name)
            if repeat:
                times[name].append(elapsed)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def _row(name: str, model: Tokenizer, graphs: Graphs, metrics: dict[str, Any]) -> dict[str, Any]:
    cfg = model.config
    encoder_path, decoder_path, ds = graphs
    compute = {part: round(count_macs(path, 256, 256, downsample=ds).gmac_per_megapixel, 4)
               for part, path in (("encoder", encoder_path), ("decoder", decoder_path))}  # fmt: skip
    return {
        "preset": name,
        "stem": cfg.stem,
        "patch": cfg.patch,
        "shortcuts": cfg.shortcuts,
        "widths": list(cfg.widths),
        "parameters": sum(p.numel() for p in model.parameters()),
        "gmac_per_megapixel": {**compute, "total": round(compute["encoder"] + compute["decoder"], 4)},
        "psnr_db": metrics.get("psnr_db"),
        "ssim": metrics.get("ssim"),
        "codebook_usage": metrics.get("codebook_usage"),
        "steps": metrics.get("steps"),
        "train_seconds": metrics.get("seconds"),
        "latency_ms": {},
        "train_step_s": None,
    }


def trained(args: argparse.Namespace, name: str) -> tuple[Tokenizer, Graphs, dict[str, Any]]:
    """Train (or reuse) and export ``name``; its model, FP32 graphs and metrics.json."""
    ckpt = train(args, name)
    manifest = export(ckpt)
    graphs = (manifest.path("fp32", "encoder"), manifest.path("fp32", "decoder"), manifest.downsample)
    return checkpoint.load_tokenizer(ckpt), graphs, json.loads((ckpt.parent / "metrics.json").read_text())


def untrained(args: argparse.Namespace, name: str) -> tuple[Tokenizer, Graphs, dict[str, Any]]:
    """``name`` with its initial weights (seed --seed) exported to OUT/untrained/NAME: for cost figures only."""
    torch.manual_seed(args.seed)
    model = Tokenizer(PRESETS[name]).eval()
    folder = args.out / "untrained" / name
    folder.mkdir(parents=True, exist_ok=True)
    encoder_path, decoder_path = export_graphs(model, folder)
    return model, (encoder_path, decoder_path, model.downsample), {}


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], sizes: list[str], setup: dict[str, Any]) -> str:
    """The comparison as a markdown table, with the run's settings above it."""
    if setup["untrained"]:
        budget = f"Initial weights (seed {setup['seed']}), no training: cost figures only."
    else:
        held_out = setup["val"] or "part of --data"
        budget = (f"Equal budget: {setup['steps']} steps, batch {setup['batch_size']}, crop {setup['crop']}, seed "
                  f"{setup['seed']}, data `{setup['data']}`, held out `{held_out}`.")  # fmt: skip
    lines = [
        f"{budget} Latency: ONNX Runtime {setup['onnxruntime']} CPU, {setup['threads']} threads, median of "
        f"{setup['runs']} FP32 encoder + decoder round trips per size; training step: torch {setup['torch']} CPU, "
        f"{setup['threads']} threads, batch {setup['batch_size']}, crop {setup['crop']}, median of "
        f"{setup['step_runs']}; models interleaved in one process; measured {setup['date']} on {setup['machine']}.",
        "",
        "| preset | stem | parameters | GMAC/MP enc | dec | total | PSNR dB | SSIM | usage | "
        + " | ".join(f"ms {s}" for s in sizes)
        + " | train step s |",
        "|" + "---|" * (10 + len(sizes)),
    ]
    for r in rows:
        stem = f"{r['stem']}" + (f" p{r['patch']}" if r["patch"] > 1 else "") + (" +DC-AE" if r["shortcuts"] else "")
        g = r["gmac_per_megapixel"]
        cells = [r["preset"], stem, f"{r['parameters'] / 1e6:.2f} M", f"{g['encoder']:.1f}", f"{g['decoder']:.1f}",
                 f"{g['total']:.1f}", _fmt(r["psnr_db"], 2), _fmt(r["ssim"], 3), _fmt(r["codebook_usage"], 2),
                 *(_fmt(r["latency_ms"].get(s), 1) for s in sizes), _fmt(r["train_step_s"], 3)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Held-out PSNR against total GMAC per megapixel; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        if r["psnr_db"] is None:
            continue
        x = r["gmac_per_megapixel"]["total"]
        ax.scatter(x, r["psnr_db"], s=40)
        ax.annotate(r["preset"], (x, r["psnr_db"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("encoder + decoder GMAC per megapixel (ONNX graph)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to every provq-train run (e.g. -- --lr 5e-4 --device cuda).",
    )
    p.add_argument("--data", default=None, help="provq-train --data for every preset (needed unless --untrained)")
    p.add_argument("--val", default=None, help="provq-train --val (default: provq-train's hold-out of --data)")
    p.add_argument("--out", required=True, type=Path, help="runs go to OUT/NAME; the comparison files to OUT")
    p.add_argument("--presets", default=",".join(CANDIDATES), help="comma-separated (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps, the same for every preset")
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--crop", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=None, help="provq-train --warmup-steps (default: its own)")
    p.add_argument("--transition-steps", type=int, default=None, help="provq-train --transition-steps (default: its)")
    p.add_argument("--no-train", action="store_true", help="never train: every OUT/NAME/last.pt must be finished")
    p.add_argument("--sizes", default="256x256,640x480", help="latency frame sizes W x H (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--runs", type=int, default=30, help="timed round trips per model and size (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed round trips first (default: %(default)s)")
    p.add_argument("--step-runs", type=int, default=5, help="timed training steps per model; 0: none (%(default)s)")
    p.add_argument("--untrained", action="store_true", help="costs only: initial weights, no training, no PSNR")
    args = p.parse_args(argv)
    args.train_args = extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return command_frame("compare_architectures", lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise ProvqError(f"unknown preset(s) {unknown}: choose from {', '.join(PRESETS)}")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if not args.untrained and (args.data is None or args.steps is None):
        raise ProvqError("--data and --steps are needed to train (or pass --untrained for cost figures only)")
    if (args.steps is not None and args.steps < 1) or args.runs < 1 or args.threads < 1 or args.step_runs < 0:
        raise ProvqError("--steps, --runs and --threads must be positive, --step-runs at least 0")
    args.out.mkdir(parents=True, exist_ok=True)
    models, graphs, rows = {}, {}, []
    for name in names:
        models[name], graphs[name], metrics = (untrained if args.untrained else trained)(args, name)
        rows.append(_row(name, models[name], graphs[name], metrics))
    labels = [f"{w}x{h}" for w, h in sizes]
    for size, label in zip(sizes, labels, strict=True):
        print(f"timing {label} ({args.runs} interleaved round trips per model)", flush=True)
        for row, (_, ms) in zip(rows, latencies(graphs, size, args).items(), strict=True):
            row["latency_ms"][label] = ms
    if args.step_runs:
        print(f"timing training steps ({args.step_runs} interleaved per model)", flush=True)
        for row, (_, seconds) in zip(rows, step_seconds(models, args).items(), strict=True):
            row["train_step_s"] = seconds
    setup = {
        **{
            k: getattr(args, k)
            for k in ("data", "val", "steps", "batch_size", "crop", "seed", "threads", "runs", "step_runs", "untrained")
        },
        "train_args": args.train_args,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()}-core {os.uname().machine} CPU",
    }
    (args.out / "comparison.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    (args.out / "comparison.md").write_text(markdown(rows, labels, setup))
    title = f"{args.steps} steps, batch {args.batch_size}, crop {args.crop}, seed {args.seed}"
    plotted = not args.untrained and plot(rows, args.out / "comparison.png", title)
    print(markdown(rows, labels, setup))
    print(f"wrote {args.out}/comparison.json, comparison.md" + (", comparison.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
