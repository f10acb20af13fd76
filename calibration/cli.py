"""``provq-calibrate``: INT8 Q/DQ ONNX files calibrated on representative frames, with their cost measured.

Examples:
    provq-calibrate models/tiny --data clip.mp4 --frames 300 --method entropy
    provq-calibrate models/tiny --data ~/frames --frames 256 --method percentile --size 320x192
    provq-calibrate models/tiny --data day.mp4 --data night.mp4 --frames 400      # several sources
    provq-calibrate models/tiny --data 'shots/*.png' --frames 64 --recalibrate --json calib.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from provq.edge_runtime.console import command_parser, run_command
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.preprocess import parse_size

from .calibrate import ENGINES, CalibrationConfig, calibrate
from .quantize import METHODS

PROG = "provq-calibrate"


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except EdgeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    d = CalibrationConfig(data=[])
    p = command_parser(
        PROG, "Calibrate INT8 (explicit Q/DQ) encoder and decoder ONNX files; the quantizer stays FP32.", __doc__
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by provq-export")
    p.add_argument(
        "--data", required=True, action="append", help="frames: a video, image folder, glob or camera URI (repeatable)"
    )
    p.add_argument("--frames", type=int, default=d.frames, help="calibration frames, >= 64 (default: %(default)s)")
    p.add_argument("--method", default=d.method, choices=list(METHODS), help="range method (default: %(default)s)")
    p.add_argument("--engine", default=d.engine, choices=ENGINES, help="quantizer (default: %(default)s)")
    p.add_argument("--size", type=_size, default=d.size, metavar="WxH", help="frame size (default: 256x256)")
    p.add_argument("--eval-frames", type=int, default=d.evaluation_frames, help="held-out frames (default: 32)")
    p.add_argument("--recalibrate", action="store_true", help="ignore a cached calibration and run it again")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 calibrated, 2 user error: one line on stderr, no traceback)."""
    return run_command(PROG, build_parser(), _calibrate, argv, log_format="%(message)s", log_level=logging.INFO)


def _calibrate(args: argparse.Namespace) -> int:
    cfg = CalibrationConfig(
        data=args.data,
        frames=args.frames,
        method=args.method,
        engine=args.engine,
        size=args.size,
        evaluation_frames=args.eval_frames,
    )
    report = calibrate(args.model_dir, cfg, recalibrate=args.recalibrate)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    r = report["int8"]
    print(
        f"INT8 on {r['frames']} held-out frames: token agreement {r['token_agreement']:.2%}, "
        f"PSNR {r['psnr_db']:.2f} dB (FP32 {r['fp32_psnr_db']:.2f} dB, drop {r['psnr_drop_db']:.3f} dB)"
    )
    if report.get("int8_cpu"):
        c = report["int8_cpu"]
        print(
            f"INT8 for ONNX Runtime on CPUs (int8-cpu files): token agreement {c['token_agreement']:.2%}, "
            f"PSNR {c['psnr_db']:.2f} dB (drop {c['psnr_drop_db']:.3f} dB)"
        )
    if report.get("fp16_encoder_int8_decoder"):
        f = report["fp16_encoder_int8_decoder"]
        print(
            f"FP16 encoder (rounding emulated) + INT8 decoder: token agreement {f['token_agreement']:.2%}, "
            f"PSNR {f['psnr_db']:.2f} dB (drop {f['psnr_drop_db']:.3f} dB): run with --precision int8 "
            "--encoder-precision fp16 to keep FP32's ids"
        )
    print(f"wrote {Path(args.model_dir) / 'encoder.int8.onnx'}, decoder.int8.onnx (Q/DQ, TensorRT), the int8-cpu "
          "files (ONNX Runtime CPU) and calibration.json")  # fmt: skip
    print(f"next: provq-export check {args.model_dir}   then on the device: provq-export engine {args.model_dir} "
          "--precision int8")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
