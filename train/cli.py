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
import sys
from dataclasses import fields

from provq.edge_runtime.console import command_frame, command_parser

from .errors import ProvqError
from .presets import PRESETS
from .schedule import CURVES, KINDS

PROG = "provq-train"


def build_parser() -> argparse.ArgumentParser:
    from .trainer import TrainConfig

    d = TrainConfig()
    p = command_parser(
        PROG, "Train an image/video-frame tokenizer with progressive vector quantization (ProVQ).", __doc__
    )
    p.add_argument(
        "--data",
        default=d.data,
        help="folder of images/videos (recursive), one image or video file, WebDataset tar shards "
        "('shards/{000000..000099}.tar'), or 'sample' (default: %(default)s)",
    )
    p.add_argument("--val", default=None, help="validation folder/file/shards (default: hold out part of --data)")
    p.add_argument(
        "--val-frames",
        type=int,
        default=d.val_frames,
        help="at most this many validation frames, spread evenly (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader processes decoding frames, per rank; 0 = in the training process "
        "(default: the CPUs per rank less one, 1 to 8)",
    )
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=d.max_video_frames,
        help="frames sampled evenly from each video (default: %(default)s)",
    )
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=d.max_bad_fraction,
        help="stop once more than this share of file reads failed to decode (default: %(default)s)",
    )
    p.add_argument(
        "--index-cache",
        default=None,
        help="folder for cached file indexes (default: $XDG_CACHE_HOME/provq/index or ~/.cache/provq/index)",
    )
    p.add_argument("--reindex", action="store_true", help="rebuild the file index even if the cached one is valid")
    p.add_argument("--out", default=d.out, help="output folder for last.pt and metrics.json (default: %(default)s)")
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS), help="model size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps (default: %(default)s)")
    p.add_argument("--code-dim", type=int, default=None, help="codebook vector dimension (default: the preset's)")
    p.add_argument(
        "--schedule",
        default=d.schedule,
        choices=KINDS,
        help="provq, or hard VQ from step 0 (default: %(default)s)",
    )
    p.add_argument("--warmup-steps", type=int, default=None, help="continuous warm-up steps (default: 20%% of --steps)")
    p.add_argument(
        "--transition-steps",
        type=int,
        default=None,
        help="continuous->discrete steps T (default: 30%% of --steps)",
    )
    p.add_argument(
        "--curve", default=d.curve, choices=CURVES, help="alpha(t) over the transition (default: %(default)s)"
    )
    p.add_argument(
        "--lam",
        type=float,
        default=d.lam,
        help="VQ-loss weight at the transition start (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="frames per step and process (default: %(default)s)",
    )
    p.add_argument("--crop", type=int, default=d.crop, help="training crop size in pixels (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--recon-loss", default=d.recon_loss, choices=("l1", "l2", "l1+l2"), help="(default: %(default)s)")
    p.add_argument(
        "--perceptual-weights",
        default=None,
        help="local VGG16 state dict (torchvision format) for a perceptual loss",
    )
    p.add_argument(
        "--lpips-weights",
        default=None,
        help="local LPIPS linear weights (lpips vgg.pth) with --perceptual-weights",
    )
    p.add_argument("--perceptual-weight", type=float, default=d.perceptual_weight, help="(default: %(default)s)")
    p.add_argument(
        "--gan-weight",
        type=float,
        default=d.gan_weight,
        help="PatchGAN loss weight, 0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--gan-start",
        type=int,
        default=d.gan_start,
        help="step at which the GAN loss starts (default: %(default)s)",
    )
    p.add_argument(
        "--restart-dead-codes-every",
        type=int,
        default=d.restart_dead_codes_every,
        help="restart codes unused for this many steps, 0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--int8-weight",
        type=float,
        default=d.int8_weight,
        help="quantization-aware term: weight of the simulated-INT8 encoder's latent error relative to the code "
        "spacing, so INT8 keeps the FP32 ids; 0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--margin-weight",
        type=float,
        default=d.margin_weight,
        help="weight of the term that keeps latents inside their code cells, so INT8 keeps the FP32 ids; "
        "0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=d.margin,
        help="target depth of each latent in its code's cell: 1 at the code, 0 at the largest ball inside the cell "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="validation interval in steps (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="checkpoint interval (default: %(default)s)",
    )
    p.add_argument(
        "--val-size", type=int, default=d.val_size, help="validation centre-crop size (default: %(default)s)"
    )
    p.add_argument(
        "--kmeans-points", type=int, default=0, help="latents for the k-means init; 0 = 20 x codebook size (default)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"), help="(default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument(
        "--resume",
        default=None,
        help="continue from a checkpoint (last.pt), or 'default' to fine-tune the shipped model",
    )
    p.add_argument(
        "--qat",
        action="store_true",
        help="quantization-aware fine-tune of --resume's trained model: INT8 ranges calibrated on --data, then "
        "training with INT8 fake quantization (NVIDIA ModelOpt); the fake-quantized network becomes the model of "
        "record. Steps count from 0; use a low --lr (1e-4)",
    )
    p.add_argument(
        "--qat-ranges",
        default=d.qat_ranges,
        choices=("percentile", "max"),
        help="--qat's activation ranges: the 99.99th percentile of |x| or its maximum (default: %(default)s)",
    )
    p.add_argument("--stop-at", type=int, default=None, help="checkpoint and stop at this step; --resume continues")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 130/143 stopped by a signal)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    return command_frame(PROG, lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, train

    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in known}
    values["progress"] = not args.no_progress
    for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
        if values[name] <= 0:
            raise ProvqError(f"--{name.replace('_', '-')} must be a positive integer, got {values[name]}")
    metrics = train(TrainConfig(**values))
    print(
        f"{PROG}: done in {metrics['seconds']:.0f} s: step {metrics['steps']}, val PSNR {metrics['psnr_db']:.2f} dB, "
        f"SSIM {metrics['ssim']:.3f}, codebook usage {metrics['codebook_usage']:.1%}, "
        f"perplexity {metrics['perplexity']:.0f}; "
        f"wrote {args.out}/last.pt and {args.out}/metrics.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
