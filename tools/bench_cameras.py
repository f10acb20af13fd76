"""Many cameras on one box: one batched ``provq-run --input ...`` against separate ``provq-run`` processes, one per
camera, on the same streams, in one run of measurements.

Cameras: GStreamer's RTSP server on 127.0.0.1 (tests/rtsp_server.py, run by the system python3) serving the sample
clip at ``--size`` as H.264 on ``--cameras`` mounts; every client gets its own stream, so both modes read the same
load of streams. Without that server (or with ``--source files``) the cameras are the sample clip resized by
provq-run itself, played at the camera rate (``--realtime --input-rate``) on an endless loop.

Two phases, each ``--repeats`` times with the two modes alternating (batched, separate, batched, ...), every run
stopped by SIGTERM after ``--seconds`` and read from its --json:

    live        cameras at ``--rate`` FPS (10): does one batched run keep every camera at its rate (per-camera FPS,
                frames dropped)? The separate processes are measured too.
    saturation  cameras at ``--saturate-rate`` FPS (30), faster than the CPU follows (files: unpaced): the total
                throughput of each mode (frames per second over all cameras; separate: the sum of the processes'
                FPS, each over its own first-to-last frame; ``start_skew_s`` says how much longer the earliest
                stream ran than the latest) and their ratio.

Each run also reports the CPU time its provq-run processes used (user + system, model loading included) and the
frames per CPU second: on a machine shared with other work the scheduler's share of the cores, not only the
runtime, decides the throughput, and the frames per CPU second show the cost of a frame in each mode.

ONNX Runtime threads: the batched run gets ``--threads-batched`` (2: one per core of a 2-core box), each separate
process ``--threads-separate`` (1: the fewest; four processes of one thread already put four inference threads on
two cores, more would only oversubscribe them further). Figures are medians over the repeats; ``ratio`` is the
batched median over the separate median.

    python tools/bench_cameras.py                                    # 4 cameras, 384x288, 10 and 30 FPS, 3 repeats
    python tools/bench_cameras.py --seconds 30 --repeats 5 --json cams.json
    python tools/bench_cameras.py --source files                     # no RTSP server: paced files

Exit status: 0, or 2 on a user error (one line). Run it on an otherwise idle machine: the figures are the machine's.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provq.edge_runtime.console import command_frame
from provq.edge_runtime.errors import EdgeError

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, "-m", "provq.edge_runtime.run_cli"]
START_S = 60.0  # how long a run may take to load the model and open its cameras before --seconds start counting


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not WIDTHxHEIGHT: {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"at least 16x16, got {text}")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_cameras",
        description=__doc__.split("\n", 1)[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", choices=("auto", "rtsp", "files"), default="auto", help="default: %(default)s")
    p.add_argument("--cameras", type=int, default=4, help="default: %(default)s")
    p.add_argument("--size", type=_size, default=(384, 288), metavar="WxH", help="default: 384x288")
    p.add_argument("--rate", type=float, default=10.0, help="camera FPS of the live phase (default: %(default)s)")
    p.add_argument("--saturate-rate", type=float, default=30.0, help="camera FPS of the saturation phase")
    p.add_argument("--seconds", type=float, default=20.0, help="each run's length once streaming (default: 20)")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode and phase (default: %(default)s)")
    p.add_argument("--threads-batched", type=int, default=2, help="ONNX Runtime threads of the batched run")
    p.add_argument("--threads-separate", type=int, default=1, help="ONNX Runtime threads of each separate process")
    p.add_argument("--phases", default="live,saturation", help="which phases (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p


@contextmanager
def rtsp_cameras(args: argparse.Namespace, rate: float) -> Iterator[list[str]]:
    """The RTSP URLs of ``args.cameras`` mounts served at ``rate`` FPS (the server stops on exit)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from rtsp_server import RtspServer

    width, height = args.size
    server = RtspServer(tuple(f"cam{i}" for i in range(args.cameras)), width=width, height=height, rate=rate)
    server.start()
    try:
        yield [server.url(mount) for mount in server.mounts]
    finally:
        server.stop()


def file_cameras(args: argparse.Namespace, rate: float, paced: bool) -> list[str]:
    """provq-run options that make sample:// a camera at ``args.size`` and ``rate`` (``paced``: in real time)."""
    width, height = args.size
    options = ["--input-width", str(width), "--input-height", str(height), "--input-loop", "-1"]
    return options + (["--realtime", "--input-rate", str(rate)] if paced else [])


def _launch(commands: list[list[str]], folder: Path, seconds: float) -> list[tuple[subprocess.Popen, Path]]:
    """Start every command at once, wait until each has written its first token chunk (or START_S), let them run
    ``seconds`` more, then SIGTERM them all at the same moment."""
    runs = []
    for k, command in enumerate(commands):
        log = (folder / f"run{k}.log").open("w")
        runs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder), folder / f"run{k}"))
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and not all(list(folder.glob(f"{run.name}*.ptok")) for _, run in runs):
        if any(proc.poll() is not None for proc, _ in runs):
            break
        time.sleep(0.2)
    time.sleep(seconds)
    for proc, _ in runs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in runs:
        proc.wait(120)
    return runs


def _read(folder: Path, name: str) -> dict[str, Any]:
    """A run's --json; EdgeError with the last line of its log when it wrote none."""
    path = folder / f"{name}.json"
    if not path.exists():
        log = folder / f"{name}.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        raise EdgeError(f"{name} wrote no {path.name} ({tail[0] if tail else 'no output'}); its log is in {folder}")
    return json.loads(path.read_text())


def run_once(args: argparse.Namespace, mode: str, uris: list[str], options: list[str], work: Path) -> dict[str, Any]:
    """One run of one mode: per-camera FPS and drops, and the total FPS."""
    folder = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
    common = ["--max-frames", "1000000", *options]
    if mode == "batched":
        inputs = [arg for uri in uris for arg in ("--input", uri)]
        commands = [[*RUN, *inputs, "--tokens", "run0-{i}.ptok", "--json", "run0.json",
                     "--threads", str(args.threads_batched), *common]]  # fmt: skip
    else:
        commands = [[*RUN, uri, "--tokens", f"run{k}.ptok", "--json", f"run{k}.json",
                     "--threads", str(args.threads_separate), *common] for k, uri in enumerate(uris)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _launch(commands, folder, args.seconds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if mode == "batched":
        s = _read(folder, "run0")
        streams = s["streams"]
        total = s["totals"]["fps"]
        extra = {"frames_per_call": s["totals"]["frames_per_call"]}
    else:
        streams = [_read(folder, f"run{k}") for k in range(len(uris))]
        total = round(sum(st["fps"] for st in streams), 3)
        extra = {}
    elapsed = [st["elapsed_s"] for st in streams]
    frames = sum(st["frames"] for st in streams)
    return {
        "total_fps": total,
        "cpu_s": round(cpu_s, 2),  # CPU time of the provq-run processes, start-up included
        "frames_per_cpu_s": round(frames / cpu_s, 3) if cpu_s > 0 else 0.0,
        "start_skew_s": round(max(elapsed) - min(elapsed), 2),  # how much longer the earliest stream ran
        "camera_fps": [st["fps"] for st in streams],
        "dropped": [st["dropped"] for st in streams],
        "frames": [st["frames"] for st in streams],
        "command": shlex.join(commands[0]) + (f"  (x{len(commands)}, one per camera)" if len(commands) > 1 else ""),
        **extra,
    }


def _median(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs]
    if isinstance(values[0], list):
        return [round(statistics.median(column), 3) for column in zip(*values, strict=True)]
    return round(statistics.median(values), 3)


def phase(args: argparse.Namespace, name: str, rate: float, source: str, work: Path) -> dict[str, Any]:
    """Both modes, alternating, ``args.repeats`` times each, on cameras at ``rate`` FPS."""
    paced = name == "live"
    runs: dict[str, list[dict[str, Any]]] = {"batched": [], "separate": []}
    if source == "rtsp":
        with rtsp_cameras(args, rate) as uris:
            for _ in range(args.repeats):
                for mode, done in runs.items():
                    done.append(run_once(args, mode, uris, [], work))
    else:
        options = file_cameras(args, rate, paced)
        for _ in range(args.repeats):
            for mode, done in runs.items():
                done.append(run_once(args, mode, ["sample://"] * args.cameras, options, work))
    result: dict[str, Any] = {"camera_rate": rate if (paced or source == "rtsp") else "unpaced"}
    for mode, done in runs.items():
        result[mode] = {
            "median_total_fps": _median(done, "total_fps"),
            "median_frames_per_cpu_s": _median(done, "frames_per_cpu_s"),
            "median_camera_fps": _median(done, "camera_fps"),
            "median_dropped": _median(done, "dropped"),
            "runs": done,
        }
    batched, separate = result["batched"], result["separate"]
    result["ratio"] = round(batched["median_total_fps"] / separate["median_total_fps"], 3)
    result["cpu_ratio"] = round(batched["median_frames_per_cpu_s"] / separate["median_frames_per_cpu_s"], 3)
    return result


def _source(args: argparse.Namespace) -> str:
    if args.source == "files":
        return "files"
    sys.path.insert(0, str(ROOT / "tests"))
    from rtsp_server import missing

    problem = missing()
    if problem and args.source == "rtsp":
        raise EdgeError(f"the loopback RTSP server cannot run here ({problem}): install its packages or --source files")
    return "files" if problem else "rtsp"


def _print(name: str, result: dict[str, Any]) -> None:
    print(f"{name} (cameras at {result['camera_rate']} FPS):")
    for mode in ("batched", "separate"):
        r = result[mode]
        cams = " ".join(f"{v:.2f}" for v in r["median_camera_fps"])
        drops = " ".join(f"{v:g}" for v in r["median_dropped"])
        print(f"  {mode:<9} total {r['median_total_fps']:7.2f} FPS | per camera {cams} | dropped {drops} | "
              f"{r['median_frames_per_cpu_s']:.2f} frames per CPU second")  # fmt: skip
    print(f"  ratio batched / separate: {result['ratio']:.2f}x throughput, {result['cpu_ratio']:.2f}x frames per CPU s")


def _bench(args: argparse.Namespace) -> int:
    if args.cameras < 1 or args.repeats < 1 or args.seconds <= 0 or min(args.rate, args.saturate_rate) <= 0:
        raise EdgeError("--cameras, --repeats, --seconds and the rates must be positive")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - {"live", "saturation"}:
        raise EdgeError(f"--phases takes live and/or saturation, got {args.phases!r}")
    source = _source(args)
    print(f"source: {source}; {args.cameras} cameras at {args.size[0]}x{args.size[1]}; {args.seconds:g} s per run, "
          f"{args.repeats} repeats; threads: batched {args.threads_batched}, separate {args.threads_separate} each",
          flush=True)  # fmt: skip
    report: dict[str, Any] = {"source": source, "cameras": args.cameras, "size": list(args.size),
                              "seconds": args.seconds, "repeats": args.repeats, "threads_batched": args.threads_batched,
                              "threads_separate": args.threads_separate,
                              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-cameras-") as work:
        for name in phases:
            rate = args.rate if name == "live" else args.saturate_rate
            report[name] = phase(args, name, rate, source, Path(work))
            _print(name, report[name])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return command_frame("bench_cameras", lambda: _bench(args))


if __name__ == "__main__":
    sys.exit(main())
