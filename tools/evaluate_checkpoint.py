"""Validation figures of a checkpoint on any folder of images/videos: PSNR, SSIM, codebook usage, perplexity.

Every frame is centre-cropped to at most ``--size`` (a multiple of the downsample factor), encoded to ids and
decoded, exactly as ``provq-train`` evaluates its validation split.

    python tools/evaluate_checkpoint.py default --data unseen_photos/ --size 256
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from provq.edge_runtime.console import command_frame
from provq.train.checkpoint import load_tokenizer
from provq.train.errors import ProvqError
from provq.train.evaluation import evaluate
from provq.train.streaming import source_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a last.pt or 'default'")
    parser.add_argument("--data", required=True, help="folder of images/videos, or one file")
    parser.add_argument("--size", type=int, default=256, help="centre-crop size (default: %(default)s)")
    args = parser.parse_args(argv)
    return command_frame("evaluate_checkpoint", lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    model = load_tokenizer(args.checkpoint)
    frames = source_frames(args.data, max_video_frames=300)
    if not frames:
        raise ProvqError(f"no decodable frames in {args.data}")
    result = evaluate(model, frames, size=args.size, device=torch.device("cpu"))
    print(json.dumps({"frames": len(frames), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
