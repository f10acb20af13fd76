"""``provq-export engine``: build TensorRT engines for a model directory on this device. No torch.

Examples:
    provq-export engine model --precision int8                                  # encoder + decoder, 1-4x3x256x256
    provq-export engine model --precision int8 --opt-shape 1x3x288x384 --max-batch 8   # 1-8 cameras at 384x288
    provq-export engine model --part encoder --precision int8 --min-shape 1x3x256x256 --max-shape 4x3x512x512
    provq-export engine model --precision fp16 --opt-shape 1x3x720x1280         # static 720p
    provq-export engine model --part encoder --precision int8 --dla 0           # DLA core 0 (static shapes)
    provq-export engine model --precision int8 --rebuild                        # after re-calibrating

Engines, their .engine.json sidecars and the timing cache go to MODEL_DIR/engines/ (or --out-dir). An engine that
already matches this device, TensorRT and model is reused; a stale one is refused until --rebuild. Each build also
prints the equivalent trtexec command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from provq.edge_runtime.console import command_frame, command_parser
from provq.edge_runtime.engine_device import TRT_MISSING, import_tensorrt
from provq.edge_runtime.engine_shapes import parse_shape
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import PARTS, PRECISIONS

from .engine import (
    ASSUMED_TRT,
    DEFAULT_MAX_BATCH,
    DEFAULT_WORKSPACE_MB,
    build_request,
    make_request,
    plan_build,
    trtexec_command,
)
from .engine import log as engine_log

PROG = "provq-export engine"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of ``provq-export engine``."""
    p = command_parser(
        prog, "Build TensorRT engines (encoder and/or decoder) for a provq model directory on this device.", __doc__
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder with manifest.json and the ONNX files")
    p.add_argument("--part", default="both", choices=(*PARTS, "both"), help="(default: %(default)s)")
    p.add_argument("--precision", required=True, choices=PRECISIONS, help="int8 needs provq-calibrate first")
    p.add_argument("--dla", type=int, default=None, metavar="N", help="build for DLA core N (static shapes only)")
    p.add_argument("--min-shape", default=None, metavar="NxCxHxW", help="smallest input (default: --opt-shape)")
    p.add_argument(
        "--opt-shape",
        default=None,
        metavar="NxCxHxW",
        help="shape to tune for (default: --max-shape, else --min-shape, else 1x3x256x256)",
    )
    p.add_argument("--max-shape", default=None, metavar="NxCxHxW", help="largest input (default: --opt-shape)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help=f"frames per call: batch 1..N in the profile, tuned for N (default: {DEFAULT_MAX_BATCH}, or the N of the "
        "shapes when one is not 1; with --dla the shapes' N, static)",
    )
    p.add_argument(
        "--workspace",
        type=int,
        default=DEFAULT_WORKSPACE_MB,
        metavar="MB",
        help="builder workspace (default: %(default)s)",
    )
    p.add_argument("--out-dir", default=None, metavar="DIR", help="where engines go (default: MODEL_DIR/engines)")
    p.add_argument("--rebuild", action="store_true", help="replace an existing engine even if it is stale")
    return p


def engine_main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Entry point; returns the exit code (0 built or reused, 2 user error: one line on stderr, no traceback)."""
    args = build_parser(prog).parse_args(argv)
    # The builder's progress lines ("trtexec equivalent: ...", "reusing ...", "building ...") go to stdout.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = engine_log.level
    engine_log.addHandler(handler)
    engine_log.setLevel(logging.INFO)
    try:
        return command_frame(prog, lambda: _run(args, prog))
    finally:
        engine_log.removeHandler(handler)
        engine_log.setLevel(level)


def _run(args: argparse.Namespace, prog: str) -> int:
    parts = PARTS if args.part == "both" else (args.part,)
    shapes = {
        key: None if getattr(args, key) is None else parse_shape(getattr(args, key))
        for key in ("min_shape", "opt_shape", "max_shape")
    }
    options = dict(
        **shapes, max_batch=args.max_batch, workspace_mb=args.workspace, dla_core=args.dla, out_dir=args.out_dir
    )
    requests = [make_request(args.model_dir, part, args.precision, **options) for part in parts]
    try:
        import_tensorrt()
    except EdgeError as err:
        if not str(err).startswith(TRT_MISSING):
            raise
        lines = " && ".join(trtexec_command(plan_build(r, ASSUMED_TRT, None)) for r in requests)
        raise EdgeError(f"{TRT_MISSING}; the equivalent trtexec command is: {lines}") from None
    paths = [build_request(request, rebuild=args.rebuild) for request in requests]
    for path in paths:
        print(f"{prog}: {path}")
    print(
        f"next: provq-run sample:// --model {args.model_dir} --backend tensorrt --precision {args.precision}",
    )
    return 0


def main() -> int:
    """Console-script form: ``provq-export engine ...`` dispatches here with the arguments after ``engine``."""
    return engine_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
