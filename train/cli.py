"""``provq-train``: train a ProVQ tokenizer.

Examples:
    provq-train --data sample --preset tiny --steps 300 --out runs/tiny
    provq-train --data ~/photos --preset tiny --steps 3000 --crop 64 --out runs/photos
    provq-train --data clip.mp4 --schedule hard --steps 300 --out runs/hard        # the baseline
    provq-train --data 'shards/{000000..000099}.tar' --workers 8 --steps 100000 --out runs/big
    provq-train --data ~/photos --steps 6000 --out runs/photos --resume runs/photos/last.pt
    provq-train --qat --resume default --data ~/photos --steps 1000 --lr 1e-4 --out runs/qat   # INT8-aware
    torchrun --nproc-per-node 4 -m provq.train.cli --data /data/frames --preset small --device cuda --out runs/s
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import commands
from .commands import Option
from .errors import ProvqError
from .schedule import CURVES, KINDS

PROG = "provq-train"

# The flags in --help order; each takes the default and value type of its TrainConfig field (see commands.py).
TRAIN_OPTIONS = (
    Option(
        "data",
        "folder of images/videos (recursive), one image or video file, WebDataset tar shards "
        "('shards/{000000..000099}.tar'), or 'sample' (default: %(default)s)",
    ),
    Option("val", "validation folder/file/shards (default: hold out part of --data)"),
    commands.VAL_FRAMES,
    Option(
        "workers",
        "DataLoader processes decoding frames, per rank; 0 = in the training process "
        "(default: the CPUs per rank less one, 1 to 8)",
    ),
    Option("max_video_frames", "frames sampled evenly from each video (default: %(default)s)"),
    Option("max_bad_fraction", "stop once more than this share of file reads failed to decode (default: %(default)s)"),
    Option(
        "index_cache", "folder for cached file indexes (default: $XDG_CACHE_HOME/provq/index or ~/.cache/provq/index)"
    ),
    Option("reindex", "rebuild the file index even if the cached one is valid"),
    Option("out", "output folder for last.pt and metrics.json (default: %(default)s)"),
    commands.PRESET,
    Option("steps", "total optimizer steps (default: %(default)s)"),
    commands.CODE_DIM,
    Option("schedule", "provq, or hard VQ from step 0 (default: %(default)s)", KINDS),
    Option("warmup_steps", "continuous warm-up steps (default: 20%% of --steps)"),
    Option("transition_steps", "continuous->discrete steps T (default: 30%% of --steps)"),
    Option("curve", "alpha(t) over the transition (default: %(default)s)", CURVES),
    Option("lam", "VQ-loss weight at the transition start (default: %(default)s)"),
    Option("batch_size", "frames per step and process (default: %(default)s)"),
    commands.CROP,
    commands.LR,
    Option("recon_loss", "(default: %(default)s)", ("l1", "l2", "l1+l2")),
    Option("perceptual_weights", "local VGG16 state dict (torchvision format) for a perceptual loss"),
    Option("lpips_weights", "local LPIPS linear weights (lpips vgg.pth) with --perceptual-weights"),
    Option("perceptual_weight", "(default: %(default)s)"),
    Option("gan_weight", "PatchGAN loss weight, 0 = off (default: %(default)s)"),
    Option("gan_start", "step at which the GAN loss starts (default: %(default)s)"),
    Option("restart_dead_codes_every", "restart codes unused for this many steps, 0 = off (default: %(default)s)"),
    Option(
        "int8_weight",
        "quantization-aware term: weight of the simulated-INT8 encoder's latent error relative to the code "
        "spacing, so INT8 keeps the FP32 ids; 0 = off (default: %(default)s)",
    ),
    Option(
        "margin_weight",
        "weight of the term that keeps latents inside their code cells, so INT8 keeps the FP32 ids; "
        "0 = off (default: %(default)s)",
    ),
    Option(
        "margin",
        "target depth of each latent in its code's cell: 1 at the code, 0 at the largest ball inside the cell "
        "(default: %(default)s)",
    ),
    Option("eval_every", "validation interval in steps (default: %(default)s)"),
    Option("checkpoint_every", "checkpoint interval (default: %(default)s)"),
    commands.VAL_SIZE,
    Option("kmeans_points", "latents for the k-means init; 0 = 20 x codebook size (default)"),
    Option("seed", "(default: %(default)s)"),
    commands.DEVICE,
    Option("compile", "torch.compile the model (GPU)"),
    Option("resume", "continue from a checkpoint (last.pt), or 'default' to fine-tune the shipped model"),
    Option(
        "qat",
        "quantization-aware fine-tune of --resume's trained model: INT8 ranges calibrated on --data, then "
        "training with INT8 fake quantization (NVIDIA ModelOpt); the fake-quantized network becomes the model of "
        "record. Steps count from 0; use a low --lr (1e-4)",
    ),
    Option(
        "qat_ranges",
        "--qat's activation ranges: the 99.99th percentile of |x| or its maximum (default: %(default)s)",
        ("percentile", "max"),
    ),
    Option("stop_at", "checkpoint and stop at this step; --resume continues"),
    Option("progress", "no progress bar"),
)


def build_parser() -> argparse.ArgumentParser:
    from .trainer import TrainConfig

    description = "Train an image/video-frame tokenizer with progressive vector quantization (ProVQ)."
    return commands.options_parser(PROG, description, __doc__, TrainConfig, TRAIN_OPTIONS)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 130/143 stopped by a signal)."""
    return commands.run_command(PROG, build_parser(), _train, argv, log_level=logging.INFO)


def _train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, train

    values = commands.option_values(args, TRAIN_OPTIONS)
    for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
        if values[name] <= 0:
            raise ProvqError(f"--{name.replace('_', '-')} must be a positive integer, got {values[name]}")
    metrics = train(TrainConfig(**values))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 0
    print(
        f"{PROG}: done in {metrics['seconds']:.0f} s: step {metrics['steps']}, val PSNR {metrics['psnr_db']:.2f} dB, "
        f"SSIM {metrics['ssim']:.3f}, codebook usage {metrics['codebook_usage']:.1%}, "
        f"perplexity {metrics['perplexity']:.0f}; "
        f"wrote {args.out}/last.pt and {args.out}/metrics.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
