"""``provq-run``: stream frames from a file, folder or camera to tokens, and reconstruct them if OUTPUT is given.

Examples:
    provq-run sample://                                          # the shipped clip; tokens counted, nothing written
    provq-run sample:// out.mp4 --tokens clip.ptok --json run.json
    provq-run /dev/video0 display://0 --input-width 640 --input-height 480 --tokens cam.ptok
    provq-run rtsp://user:pass@cam:554/stream --tokens cam.ptok --precision int8
    provq-run frames/ recon/%06d.png --fit crop --max-frames 100
    provq-run cam.mp4 recon.mkv --tokens cam.ptok --stable-tokens  # hold near-boundary ids (lossy, fewer bytes)
    provq-run --input rtsp://cam0/live --input rtsp://cam1/live --tokens 'cams/{i}.ptok'   # many cameras, one model
    provq-decode clip.ptok decoded.mp4                          # tokens back to frames

Outputs: file.mp4 (mp4v), file.avi (MJPG), file.mkv (FFV1, lossless), folder/%06d.png or a folder, display://0.
Without OUTPUT nothing is decoded and the run measures encoding only; without --tokens the token stream is coded
and counted but not kept. Ctrl-C (SIGINT) or SIGTERM ends the run cleanly: frames already captured are finished,
the token stream is flushed and closed, the output and --json are written; the exit status is 0 after SIGTERM and
130 after SIGINT (a second Ctrl-C aborts at once, keeping the token chunks already written).

``--input URI`` (repeated, instead of INPUT) runs several cameras or files through one model, batched, with one
token stream each (--tokens and --output as templates with {i} or {name}): run_cameras.py and cameras.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import RecentRates, StatusLine, command_parser, run_command, stop_on_signals
from .errors import EdgeError
from .live_options import DEFAULT_BACKOFF_S, DEFAULT_LIVE_QUEUE, DEFAULT_RETRIES, DEFAULT_STALL_TIMEOUT_S, MAX_BACKOFF_S
from .stable import DEFAULT_MARGIN

if TYPE_CHECKING:
    from .backends import Backend
    from .cameras import CameraPipeline
    from .manifest import Manifest
    from .outputs import Output
    from .pipeline import Pipeline
    from .sources import FrameSource
    from .stream_state import PipelineConfig

PROG = "provq-run"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(PROG, "Stream frames to provq tokens (.ptok) and optionally reconstruct them.", __doc__)
    p.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        default=None,
        help="sample://, a video, a folder or glob of images, /dev/video0, rtsp://..., csi://0, gst://...",
    )
    p.add_argument(
        "output",
        metavar="OUTPUT",
        nargs="?",
        default=None,
        help="reconstructions: file.mp4|.avi|.mkv, folder/%%06d.png, a folder, display://0",
    )
    p.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=None,
        metavar="URI",
        help="one of several cameras or files batched through one model (repeat it; instead of INPUT); --tokens "
        "and --output are then templates with {i} (the input's index) or {name}",
    )
    p.add_argument(
        "--output",
        dest="outputs",
        default=None,
        metavar="TEMPLATE",
        help="with --input: each input's reconstructions, e.g. 'cams/{i}.mp4'",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --input: at most N frames per encoder/decoder call (default: the TensorRT engine's profile "
        "maximum, no limit on ONNX Runtime)",
    )
    p.add_argument(
        "--model", default="default", help="model directory from provq-export, or 'default' (default: %(default)s)"
    )
    p.add_argument(
        "--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime"), help="default: %(default)s"
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="default: %(default)s")
    p.add_argument(
        "--encoder-precision",
        default=None,
        choices=("fp32", "fp16", "int8"),
        help="run the encoder at another precision than --precision, e.g. fp32 (ONNX Runtime) or fp16 (TensorRT) "
        "with --precision int8: FP32's token ids with an INT8 decoder (default: --precision)",
    )
    p.add_argument(
        "--tokens",
        type=Path,
        default=None,
        metavar="FILE.ptok",
        help="write the token stream here ('cams/{i}.ptok' with --input)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the run's figures here")
    p.add_argument("--headless", action="store_true", help="no window: ignore a display:// OUTPUT")
    p.add_argument(
        "--fit",
        default="pad",
        choices=("pad", "crop", "resize"),
        help="how frames meet a multiple of the model's downsample factor (default: %(default)s)",
    )
    p.add_argument("--input-width", type=positive_int, default=None, metavar="W", help="resize frames to this width")
    p.add_argument("--input-height", type=positive_int, default=None, metavar="H", help="resize frames to this height")
    p.add_argument("--input-rate", type=float, default=None, metavar="R", help="camera rate; re-times files")
    p.add_argument("--input-loop", type=int, default=0, metavar="N", help="replay files N more times, -1 forever")
    p.add_argument("--realtime", action="store_true", help="play files at their frame rate (--input-rate re-times)")
    p.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="live sources: reconnect attempts per outage, waits doubling from "
        f"{DEFAULT_BACKOFF_S:g} s to {MAX_BACKOFF_S:g} s; -1 forever (default: %(default)s)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=DEFAULT_STALL_TIMEOUT_S,
        metavar="S",
        help="live sources: reconnect after S seconds without a frame; also the wait to open (default: %(default)s)",
    )
    p.add_argument(
        "--live-queue",
        type=int,
        default=DEFAULT_LIVE_QUEUE,
        metavar="N",
        help="live sources: keep the newest N frames when inference falls behind, dropping (and counting) the "
        "oldest (default: %(default)s)",
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="K", help="ONNX Runtime threads")
    p.add_argument(
        "--codec",
        default="ctx",
        choices=("ctx", "zlib", "zstd", "none"),
        help="token stream coding: ctx (context-coded ids, .ptok version 2) or the version-1 codings zlib, zstd, "
        "none (default: %(default)s)",
    )
    p.add_argument(
        "--stable-tokens",
        type=_margin,
        nargs="?",
        const=DEFAULT_MARGIN,
        default=None,
        metavar="M",
        help="lossy: keep a cell's previous id while its code stays within relative distance margin M of the "
        f"nearest code (refreshed at keyframes); fewer changed ids, fewer bytes (bare flag: M = {DEFAULT_MARGIN})",
    )
    p.add_argument("--no-delta", action="store_true", help="code every frame on its own (no delta coding)")
    p.add_argument(
        "--keyframe-interval",
        type=_non_negative,
        default=0,
        metavar="N",
        help="also a keyframe every N frames; 0: one per 30-frame chunk (default: %(default)s)",
    )
    p.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N frames")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), _run, argv, "interrupted; the token chunks written so far are intact")


def check_common(args: argparse.Namespace) -> None:
    """What both forms check before anything opens: --json's folder, the codec's package."""
    from . import tokenstream
    from .outputs import check_writable_file

    if args.json is not None:
        check_writable_file(args.json, "--json")
    if args.codec == "zstd" and tokenstream.zstandard is None:
        raise EdgeError("--codec zstd needs the zstandard package: pip install zstandard (or use --codec zlib)")


def _check_paths(args: argparse.Namespace) -> None:
    from .outputs import check_writable_file

    if args.input is None:
        raise EdgeError("no input: pass INPUT (e.g. sample:// or rtsp://...), or --input URI once per camera")
    for flag, value in (("--output", args.outputs), ("--max-batch", args.max_batch)):
        if value is not None:
            raise EdgeError(f"{flag} is for several cameras given with --input; with one INPUT, give OUTPUT after it")
    if args.tokens is not None:
        check_writable_file(args.tokens, "--tokens")
        if args.tokens.exists():
            raise EdgeError(
                f"--tokens {args.tokens} already exists: token streams are never overwritten; remove it "
                "or pick another name"
            )
    check_common(args)


def open_run_backend(args: argparse.Namespace, manifest: Manifest) -> Backend:
    """The backend the options ask for (both forms), with the note on an INT8 encoder's token agreement."""
    from .backends import open_backend

    backend = open_backend(
        manifest.directory,
        args.backend,
        args.precision,
        encoder_precision=args.encoder_precision,
        threads=args.threads,
        latents=args.stable_tokens is not None,
    )
    if backend.parts["encoder"] == "int8" and "token_agreement" in manifest.data.get("int8", {}):
        print(
            f"{PROG}: note: an INT8 encoder keeps {manifest.data['int8']['token_agreement']:.0%} of FP32's token "
            "ids (calibration.json); --encoder-precision fp16 (TensorRT, GPU) or fp32 (CPU) keeps them",
            file=sys.stderr,
        )
    return backend


def pipeline_config(args: argparse.Namespace, tokens: Path | None) -> PipelineConfig:
    """What the pipeline does with each frame of one stream, from the options."""
    from .stream_state import PipelineConfig

    return PipelineConfig(
        fit=args.fit,
        max_frames=args.max_frames,
        tokens=tokens,
        codec=args.codec,
        delta=not args.no_delta,
        keyframe_interval=args.keyframe_interval,
        stable_margin=args.stable_tokens,
    )


def open_run_source(args: argparse.Namespace, uri: str) -> FrameSource:
    """One input opened with the input options (sizes, rate, loop, live queue, reconnects)."""
    from .sources import open_source

    return open_source(
        uri,
        width=args.input_width,
        height=args.input_height,
        rate=args.input_rate,
        loop=args.input_loop,
        realtime=args.realtime,
        live_queue=args.live_queue,
        retries=args.retries,
        stall_timeout_s=args.stall_timeout,
    )


def run_pipeline(
    pipeline: Pipeline | CameraPipeline,
    status_text: Callable[[Any], str],
    args: argparse.Namespace,
    manifest: Manifest,
    **fields: Any,
) -> tuple[Any, dict[str, Any], list[str]]:
    """Run one stream's Pipeline or the cameras' CameraPipeline with ``status_text(progress)`` as the status line,
    SIGINT and SIGTERM ending it cleanly. Returns (its report, the report's JSON with the backend, the model, the
    codec, ``fields`` and the signal that ended it, the signals received)."""
    backend = pipeline.backend
    status = StatusLine()
    with stop_on_signals(pipeline.stop) as received:
        try:
            report = pipeline.run(lambda progress: status.update(status_text(progress)))
        finally:
            status.done()
    summary = report.to_json()
    summary.update(
        backend=backend.name,
        precision=backend.precision,
        encoder_precision=backend.parts["encoder"],
        model=str(manifest.directory),
        preset=manifest.data.get("preset"),
        **fields,
        codec=args.codec,
        signal=received[0] if received else None,
    )
    return report, summary, received


def _run(args: argparse.Namespace) -> int:
    if args.inputs is not None:
        from .run_cameras import run_cameras

        return run_cameras(args)
    from .manifest import load_manifest, write_json_atomic
    from .outputs import open_output
    from .pipeline import Pipeline, Progress
    from .source_uri import display

    _check_paths(args)
    manifest = load_manifest(args.model)
    with ExitStack() as stack:
        source = stack.enter_context(open_run_source(args, args.input))
        output = None
        if args.output is not None and not (args.headless and args.output.lower().startswith("display://")):
            output = open_output(args.output, fps=source.fps)
            stack.callback(output.close, ok=False)  # abandons a partial video if we never get to run
        backend = open_run_backend(args, manifest)
        stack.callback(backend.close)
        print(f"{PROG}: {source.describe()} | {backend.describe()}", file=sys.stderr)
        pipeline = Pipeline(source, backend, pipeline_config(args, args.tokens), output)
        rates = RecentRates()

        def status_text(p: Progress) -> str:
            (fps,) = rates.update(p.elapsed_s, [p.frames])
            size = f"{p.size[0]}x{p.size[1]}" if p.size else "-"
            tokens = f"{p.grid[0] * p.grid[1]} tokens/frame" if p.grid else "- tokens/frame"
            per_frame = f"{p.stream_bytes / p.stream_frames:.0f} B/frame" if p.stream_frames else "- B/frame"
            total = f"/{min(source.total, args.max_frames or source.total)}" if source.total else ""
            return (
                f"{backend.name} {backend.precision} | {size} | {fps} FPS | {tokens} | {per_frame} | "
                f"frame {p.frames}{total}"
            )

        _, summary, received = run_pipeline(
            pipeline,
            status_text,
            args,
            manifest,
            input=display(args.input, limit=1000),
            output=args.output,
            tokens=str(args.tokens) if args.tokens else None,
        )
    if args.json is not None:
        write_json_atomic(args.json, summary)
    _print_summary(summary, args, output)
    return 130 if "SIGINT" in received else 0


def _print_summary(s: dict[str, Any], args: argparse.Namespace, output: Output | None) -> None:
    """The end-of-run table (stdout): throughput, sizes, then per-stage p50 / p95 like trtexec's summary."""
    lines = [
        f"{PROG}: {s['frames']} frames in {s['elapsed_s']:.2f} s = {s['fps']:.2f} FPS (dropped {s['dropped']}, "
        f"gaps {len(s['gaps'])}){' - stopped by ' + s['signal'] if s['signal'] else ''}"
    ]
    if s["grid"]:
        raw = s["raw_bits_per_frame"] / 8
        w, h = s["size"]
        psnr = f" | PSNR {s['psnr_db']:.2f} dB" if s["psnr_db"] is not None else ""
        lines.append(
            f"  {s['backend']} {s['precision']} | {w}x{h} -> {s['grid'][0]}x{s['grid'][1]} tokens | "
            f"{s['bytes_per_frame']:.1f} B/frame of {raw:.0f} raw ({s['bytes_per_frame'] / raw:.1%}){psnr}"
        )
        stable = f", stable tokens M = {s['stable_tokens']}" if s["stable_tokens"] is not None else ""
        changed = s["changed_ids_per_frame"]
        lines.append(f"  codec {s['codec']}{stable} | {changed if changed is not None else '-'} changed ids/frame")
        lines.append(f"  {'stage ms':<12}{'p50':>9}{'p95':>9}")
        rows = [*s["stage_ms"].items(), ("end-to-end", {"p50": s["latency_ms_p50"], "p95": s["latency_ms_p95"]})]
        lines += [f"  {name:<12}{ms['p50']:>9.2f}{ms['p95']:>9.2f}" for name, ms in rows]
    written = [x for x in (output.describe() if output else None, s["tokens"], args.json) if x]
    if written:
        lines.append("wrote: " + ", ".join(map(str, written)))
    if s["tokens"] and s["frames"]:
        model = "" if args.model == "default" else f" --model {args.model}"
        lines.append(f"next: provq-decode {s['tokens']} decoded.mp4{model}")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
