"""Soak test of the real streaming pipeline: memory, file descriptors, threads and speed over a long run.

Streams the shipped sample clip on an endless loop (``sample://``, resized to ``--size``) through the shipped model
on ONNX Runtime into a real ``.ptok`` in a temporary folder, exactly as ``provq-run`` does, and samples the process
every ``--every`` seconds: frames done, FPS over the last interval, resident memory (VmRSS), open file descriptors
and OS threads. At the end it prints a JSON summary and checks that

    - resident memory grew by less than --max-rss-growth-mb (20 MB) from the end of warm-up (the first 10% of the
      frames) to the end of the run,
    - no file descriptor was leaked (during the run: end of warm-up vs the last sample; around the run: before the
      source opened vs after the pipeline closed it and its token stream),
    - the token stream reads back whole (no damaged chunk, no torn tail) with one frame per frame written,
    - every requested frame was written.

Exit status: 0 when all hold, 1 when one does not (the summary's "failures" says which), 2 on a user error.

    python tools/soak.py                               # 20000 frames at 128x72 (16 x 9 tokens), a sample every 10 s
    python tools/soak.py --frames 500 --every 2        # a quick check
    python tools/soak.py --size 480x272 --json soak.json

Linux only (reads /proc/self). Run it on an otherwise idle machine: the FPS figures are the machine's, not provq's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from provq.edge_runtime.backends import open_backend
from provq.edge_runtime.console import command_frame
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.pipeline import Pipeline, PipelineConfig, Progress
from provq.edge_runtime.preprocess import parse_size
from provq.edge_runtime.sources import open_source
from provq.edge_runtime.stable import load_codebook
from provq.edge_runtime.tokenstream import Frame, TokenStreamReader

PROG = "soak"
POLL_S = 0.1  # how often the pipeline reports progress: the warm-up snapshot is taken within this of its frame


@dataclass(frozen=True)
class Sample:
    """One look at the process."""

    frames: int  # written so far
    elapsed_s: float
    fps: float  # over the interval since the previous sample
    rss_mb: float  # VmRSS
    fds: int  # entries in /proc/self/fd
    threads: int  # OS threads (Threads: in /proc/self/status)


def process_status() -> tuple[float, int, int]:
    """(resident set in MB, open file descriptors, OS threads) of this process, from /proc/self."""
    rss_kb = threads = 0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kb / 1024.0, len(os.listdir("/proc/self/fd")), threads


class Sampler:
    """Called by the pipeline every POLL_S: keeps the warm-up snapshot, and a printed sample every ``every_s``."""

    def __init__(self, total: int, warmup_frames: int, every_s: float) -> None:
        self.total = total
        self.warmup_frames = warmup_frames
        self.every_s = every_s
        self.samples: list[Sample] = []
        self.warmup: Sample | None = None
        self._last = (0.0, 0)  # elapsed, frames at the previous sample
        self._next = every_s

    def _take(self, progress: Progress) -> Sample:
        rss, fds, threads = process_status()
        t0, n0 = self._last
        interval = progress.elapsed_s - t0
        fps = (progress.frames - n0) / interval if interval > 0 else 0.0
        return Sample(progress.frames, round(progress.elapsed_s, 2), round(fps, 1), round(rss, 1), fds, threads)

    def __call__(self, progress: Progress) -> None:
        if self.warmup is None and progress.frames >= self.warmup_frames:
            self.warmup = self._take(progress)
            print(f"{PROG}: warm-up done at frame {progress.frames}: RSS {self.warmup.rss_mb:.1f} MB, "
                  f"{self.warmup.fds} fds, {self.warmup.threads} threads", flush=True)  # fmt: skip
        if progress.elapsed_s >= self._next:
            self._next += self.every_s
            sample = self._take(progress)
            self._last = (progress.elapsed_s, progress.frames)
            self.samples.append(sample)
            print(
                f"{PROG}: frame {sample.frames}/{self.total} | {sample.elapsed_s:.0f} s | {sample.fps:.1f} FPS | "
                f"RSS {sample.rss_mb:.1f} MB | {sample.fds} fds | {sample.threads} threads",
                flush=True,
            )


def check_stream(path: Path, codebook: np.ndarray) -> dict[str, Any]:
    """Read the whole stream back (``codebook``: the model's, K x D): frame count, whether the indices run 0..n-1,
    damage and torn tail."""
    frames, contiguous = 0, True
    with TokenStreamReader(path, codebook=codebook) as reader:
        for item in reader:
            if isinstance(item, Frame):
                contiguous = contiguous and item.index == frames
                frames += 1
        report = reader.report
    size = path.stat().st_size
    return {
        "frames": frames,
        "contiguous": contiguous,
        "ok": report.ok,
        "damaged_chunks": len(report.damaged),
        "torn_tail_bytes": report.torn_tail_bytes,
        "bytes": size,
        "bytes_per_frame": round(size / frames, 2) if frames else None,
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    width, height = parse_size(args.size)
    warmup_frames = max(1, args.frames // 10)
    backend = open_backend(args.model, "onnxruntime", args.precision, threads=args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="provq-soak-") as tmp:
            tokens = Path(tmp) / "soak.ptok"
            rss_before, fds_before, threads_before = process_status()
            source = open_source("sample://", loop=-1, width=width, height=height)
            with source:
                print(f"{PROG}: {source.describe()} | {backend.describe()} | {args.frames} frames", flush=True)
                sampler = Sampler(args.frames, warmup_frames, args.every)
                pipeline = Pipeline(source, backend, PipelineConfig(max_frames=args.frames, tokens=tokens))
                report = pipeline.run(sampler, every_s=min(POLL_S, args.every))
            rss_end, fds_after, threads_after = process_status()
            stream = check_stream(tokens, load_codebook(backend.manifest))
    finally:
        backend.close()

    samples = sampler.samples
    warm = sampler.warmup
    if warm is None:  # ended before a progress call saw the warm-up frame (only for a handful of frames)
        warm = Sample(report.frames, report.elapsed_s, report.fps, round(rss_end, 1), fds_after, threads_after)
    last = samples[-1] if samples and samples[-1].frames >= warm.frames else warm
    rates = [s.fps for s in samples[1:]] or [s.fps for s in samples]  # the first interval includes start-up
    growth = round(rss_end - warm.rss_mb, 1)

    failures = []
    if growth >= args.max_rss_growth_mb:
        failures.append(f"RSS grew {growth} MB after warm-up (limit {args.max_rss_growth_mb} MB)")
    if last.fds > warm.fds:
        failures.append(f"open fds grew during the run: {warm.fds} after warm-up, {last.fds} at the last sample")
    if fds_after > fds_before:
        failures.append(f"open fds grew around the run: {fds_before} before, {fds_after} after")
    if report.frames != args.frames:
        failures.append(f"{report.frames} frames written of {args.frames}")
    if not (stream["ok"] and stream["contiguous"] and stream["torn_tail_bytes"] == 0):
        failures.append(f"token stream does not read back whole: {stream}")
    if stream["frames"] != report.frames:
        failures.append(f"token stream holds {stream['frames']} frames, the pipeline wrote {report.frames}")

    return {
        "ok": not failures,
        "failures": failures,
        "frames": report.frames,
        "frames_requested": args.frames,
        "warmup_frames": warm.frames,
        "size": [width, height],
        "grid": list(report.grid) if report.grid else None,
        "backend": backend.name,
        "precision": backend.precision,
        "threads_option": args.threads,
        "elapsed_s": report.elapsed_s,
        "fps": report.fps,
        "fps_samples": {
            "count": len(rates),
            "min": min(rates) if rates else None,
            "median": round(statistics.median(rates), 1) if rates else None,
            "max": max(rates) if rates else None,
        },
        "rss_mb": {
            "before": round(rss_before, 1),
            "after_warmup": warm.rss_mb,
            "end": round(rss_end, 1),
            "max_sampled": max([s.rss_mb for s in samples] + [warm.rss_mb]),
        },
        "rss_growth_mb": growth,
        "fds": {"before": fds_before, "after_warmup": warm.fds, "last_sample": last.fds, "after": fds_after},
        "threads": {"before": threads_before, "after_warmup": warm.threads, "after": threads_after},
        "latency_ms": report.latency_ms,
        "dropped": report.dropped,
        "gaps": len(report.gaps),
        "stream": stream,
        "samples": [asdict(s) for s in samples],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--frames", type=int, default=20000, help="frames to stream (default: %(default)s)")
    p.add_argument("--size", default="128x72", help="frame size WxH (default: %(default)s, 16 x 9 tokens)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default: %(default)s)")
    p.add_argument("--model", default="default", help="model directory (default: the shipped model)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="default: %(default)s")
    p.add_argument("--max-rss-growth-mb", type=float, default=20.0, help="fail at this growth (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the summary here")
    args = p.parse_args(argv)
    if args.frames < 1 or args.every <= 0 or args.threads < 1:
        p.error("--frames and --threads must be at least 1 and --every above 0")
    return command_frame(PROG, lambda: _soak(args))


def _soak(args: argparse.Namespace) -> int:
    if not Path("/proc/self/status").is_file():
        raise EdgeError("needs Linux /proc/self to read memory and descriptors")
    start = time.monotonic()
    summary = soak(args)
    summary["wall_s"] = round(time.monotonic() - start, 1)
    text = json.dumps(summary, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    shown = {k: v for k, v in summary.items() if k != "samples"}  # the samples were printed as they came
    print(json.dumps(shown, indent=2))
    if summary["failures"]:
        for failure in summary["failures"]:
            print(f"{PROG}: FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"{PROG}: ok: {summary['frames']} frames, RSS growth {summary['rss_growth_mb']} MB after warm-up, "
          f"fds {summary['fds']['after_warmup']} -> {summary['fds']['last_sample']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
