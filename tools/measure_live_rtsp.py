"""Measure provq's live RTSP path against the loopback RTSP server of the tests (tests/rtsp_server.py, which needs
Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and the GStreamer plugins): how long an rtsp:// takes to open, how
long a restarted server takes to stream again, and what a consumer slower than the camera drops.

    nice -n 15 .venv/bin/python tools/measure_live_rtsp.py --cycles 5 --json live.json

1. open: ``open_source(rtsp://...)`` until the first frame, ``--cycles`` times (median).
2. restart: the server is killed (SIGKILL) while a thread reads frames, kept down ``--down`` seconds and restarted on
   the same port; "pickup" is from the restarted server answering RTSP OPTIONS to the first new frame, "gap" the
   outage the source recorded (median and max over the cycles).
3. drops: provq-run (ONNX Runtime, the default model, encoding only) on a 384x288 10 FPS stream for ``--run-s``
   seconds, stopped by SIGTERM: frames tokenized, frames dropped, FPS, from its --json.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from rtsp_server import RtspServer  # noqa: E402

from provq.edge_runtime.sources import open_source  # noqa: E402


def measure_open(server: RtspServer, cycles: int) -> list[float]:
    times = []
    for _ in range(cycles):
        start = time.monotonic()
        with open_source(server.url()) as source:
            next(source)
            times.append(time.monotonic() - start)
    return times


def measure_restart(server: RtspServer, cycles: int, down_s: float) -> list[dict[str, float]]:
    results = []
    with open_source(server.url(), retries=-1) as source:
        arrivals: list[float] = []

        def read() -> None:
            for _ in source:
                arrivals.append(time.monotonic())

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        for _ in range(cycles):
            time.sleep(2.0)
            server.kill()
            time.sleep(down_s)
            server.start()
            restarted = time.monotonic()
            while not arrivals or arrivals[-1] <= restarted:
                time.sleep(0.01)
            gap = source.gaps[-1]
            results.append({"pickup_s": arrivals[-1] - restarted, "gap_s": (gap[1] - gap[0]) / 1000})
        source.close()
        thread.join(5)
    return results


def measure_drops(run_s: float) -> dict[str, object]:
    with RtspServer(("cam",), width=384, height=288, rate=10) as server, tempfile.TemporaryDirectory() as work:
        report = Path(work) / "run.json"
        proc = subprocess.Popen([str(Path(sys.executable).parent / "provq-run"), server.url(), "--json", str(report)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(run_s)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        s = json.loads(report.read_text())
    return {key: s[key] for key in ("frames", "dropped", "fps", "elapsed_s", "latency_ms_p50", "size")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--down", type=float, default=3.0, help="seconds the server stays down (default: %(default)s)")
    p.add_argument("--run-s", type=float, default=30.0, help="seconds of provq-run for the drops (default: 30)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with RtspServer(("cam",), width=192, height=144, rate=10) as server:
        opens = measure_open(server, args.cycles)
        restarts = measure_restart(server, args.cycles, args.down)
    pickups = [r["pickup_s"] for r in restarts]
    result = {
        "open_s_median": round(statistics.median(opens), 3),
        "pickup_s_median": round(statistics.median(pickups), 3),
        "pickup_s_max": round(max(pickups), 3),
        "gap_s": [round(r["gap_s"], 3) for r in restarts],
        "down_s": args.down,
        "drops_384x288_10fps": measure_drops(args.run_s),
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
