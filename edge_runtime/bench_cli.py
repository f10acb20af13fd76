"""``provq-bench``: latency, quality and stream size of a model on every backend and precision that runs here.

Examples:
    provq-bench                                                  # shipped model and clip, every backend/precision
    provq-bench --input clip.mp4 --size 256x256 --frames 100 --warmup 10 --backends onnxruntime --threads 2
    provq-bench --model models/tiny --backends tensorrt,onnxruntime --precisions fp16,int8 --json bench.json
    provq-bench --frames 30 --json out.json --markdown out.md --plot out.png
    provq-bench --input cam.mp4 --frames 150 --backends onnxruntime --precisions fp32 --stable-margins 0.05,0.1,0.2 \
        --plot rd.png      # H.264 / WebP / JPEG at the token stream's size and the rate-distortion plot
    provq-bench --backends onnxruntime --floor token_agreement=0.98 --floor onnxruntime/int8:fps=30   # CI gate

Floors: higher-is-better figures (fps, psnr_db, ssim, token_agreement, speedup_vs_fp32) must reach the value;
for latency_ms_p50/p95/p99, bytes_per_frame, bytes_per_frame_plain and peak_rss_mb the value is a ceiling.
A missed floor prints its reason and exits 1; user errors print one line and exit 2. Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2

from .bench import BACKENDS, ROW_PRECISIONS, BenchConfig, run_benchmark
from .bench_args import Floor, check_floors, parse_floor, parse_names, parse_size
from .bench_report import format_markdown, format_text, write_plot
from .console import command_frame, command_parser
from .errors import EdgeError

PROG = "provq-bench"
NO_MATPLOTLIB = "matplotlib is not installed: pip install 'provq[study]' (or matplotlib)"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one EdgeError line instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EdgeError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``provq-bench``."""
    d = BenchConfig()
    p = command_parser(
        PROG,
        "Compare backends and precisions of a provq model: latency, PSNR/SSIM, token agreement, "
        "token stream bytes per frame, and JPEG/WebP (and H.264 on videos) at the same size.",
        __doc__,
        _OneLineParser,
    )
    p.add_argument("--model", default=d.model, metavar="MODEL_DIR", help="model folder (default: %(default)s)")
    p.add_argument("--input", default=d.input, metavar="URI", help="video, folder, glob, camera (default: %(default)s)")
    p.add_argument("--backends", default=",".join(d.backends), help="comma-separated (default: %(default)s)")
    p.add_argument("--precisions", default=",".join(d.precisions), help="comma-separated (default: %(default)s)")
    p.add_argument("--frames", type=int, default=d.frames, metavar="N", help="timed frames (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, metavar="W", help="untimed calls (default: %(default)s)")
    p.add_argument("--size", default=None, metavar="WxH", help="cover + centre-crop frames to WxH (default: as read)")
    p.add_argument("--threads", type=int, default=None, metavar="K", help="intra-op threads (default: backend's)")
    p.add_argument("--batch", type=int, default=d.batch, metavar="B", help="frames per call (default: %(default)s)")
    p.add_argument(
        "--stable-margins",
        default=",".join(f"{m:g}" for m in d.stable_margins),
        metavar="M,M,...",
        help="stable-token margins of the rate-distortion points on video inputs (default: %(default)s)",
    )
    p.add_argument("--no-video", action="store_true", help="skip the H.264 row and the rate-distortion points")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the full report as JSON")
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="write the tables as Markdown")
    p.add_argument("--plot", type=Path, default=None, metavar="PATH", help="write a PNG (needs matplotlib)")
    p.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="[BACKEND/PRECISION:]METRIC=VALUE",
        help="exit 1 when a row that ran misses it (repeatable)",
    )
    return p


def _check_outputs(paths: Sequence[Path | None]) -> None:
    for path in paths:
        if path is not None and not path.parent.is_dir():
            raise EdgeError(f"cannot write {path}: folder {path.parent} does not exist")


def _config(args: argparse.Namespace) -> tuple[BenchConfig, list[Floor]]:
    """Validated config and floors, before any work; EdgeError on a bad value."""
    backends = parse_names(args.backends, BACKENDS, "backend")
    precisions = parse_names(args.precisions, ROW_PRECISIONS, "precision")
    floors = [parse_floor(text) for text in args.floor]
    for floor in floors:
        if floor.backend is not None and (floor.backend not in backends or floor.precision not in precisions):
            raise EdgeError(f"--floor {floor.text}: that row is not benchmarked (see --backends, --precisions)")
    size = None if args.size is None else parse_size(args.size)
    try:
        margins = tuple(float(m) for m in args.stable_margins.split(",") if m.strip())
    except ValueError:
        raise EdgeError(f"--stable-margins {args.stable_margins!r}: give numbers >= 0, e.g. 0.05,0.1") from None
    config = BenchConfig(model=args.model, input=args.input, backends=backends, precisions=precisions,
                         frames=args.frames, warmup=args.warmup, size=size, threads=args.threads,
                         batch=args.batch, video=not args.no_video, stable_margins=margins)  # fmt: skip
    config.check()
    _check_outputs([args.json, args.markdown, args.plot])
    return config, floors


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings (e.g. FFmpeg on a corrupt file) so that an error stays one line."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:  # an OpenCV build without the logging bindings
        yield
        return
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 all floors met, 1 a floor missed, 2 user error (one line on stderr, no traceback)."""
    with _quiet_opencv():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    return command_frame(PROG, lambda: _bench(build_parser().parse_args(argv)))


def _bench(args: argparse.Namespace) -> int:
    config, floors = _config(args)
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise EdgeError(NO_MATPLOTLIB)
    report = run_benchmark(config, progress=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
    print(format_text(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(format_markdown(report), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if args.plot is not None:
        write_plot(report, args.plot)
        print(f"wrote {args.plot}")
    failures = check_floors(report, floors)
    for line in failures:
        print(f"{PROG}: floor missed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
