"""Train on a folder of N real image files and measure memory and start-up: does the data path scale?

    python tools/check_data_scale.py --images /data/photos --files 100000 --out runs/scale
    python tools/check_data_scale.py --files 100000 --out runs/scale       # crops of the shipped sample photos

Builds OUT/data with N JPEG files (100 folders; each a seeded random crop, 96 to 192 px a side, of an image found
below --images, or of the shipped sample photos), then runs provq-train on it as a subprocess twice: once with an
empty index cache (the index is built) and once with it (the index is loaded). While a run lasts, every 0.2 s it
reads the memory of the whole process tree (the trainer and its DataLoader workers) from /proc: the sum of RSS
(shared pages counted once per process, an upper bound) and the sum of PSS (shared pages split among the processes
sharing them: the tree's real footprint). Start-up is the wall time from launching the process to the trainer's log
line "first optimizer step done". Validation is kept small (32 frames of 64 px) and k-means short (4096 latents) so
that the runs measure the data path. On a shared machine the wall time depends on the load, so the CPU seconds the
process tree used until then (user + system, sampled every 0.2 s) are reported too. Prints one JSON object with
the machine's CPU count and load; Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from provq.train.data import IMAGE_EXTENSIONS, read_image, sample_dir

FIRST_STEP = "first optimizer step done"


def source_images(folder: Path | None, limit: int = 2000) -> list[np.ndarray]:
    """Up to ``limit`` RGB uint8 images (sorted paths) from ``folder``, or the shipped sample photos."""
    folder = folder or sample_dir() / "images"
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    images = [im for im in map(read_image, paths) if im is not None and min(im.shape[:2]) >= 96]
    if not images:
        raise SystemExit(f"no decodable image of at least 96 px found below {folder}")
    return images


def build_folder(out: Path, files: int, images: list[np.ndarray], seed: int = 0) -> None:
    """``files`` JPEG crops in out/000 .. out/099 (skipped if the folder already holds that many)."""
    if out.exists() and sum(1 for _ in out.rglob("*.jpg")) == files:
        return
    rng = np.random.default_rng(seed)
    for k in range(files):
        image = images[k % len(images)]
        h, w = image.shape[:2]
        side = int(rng.integers(96, min(192, h, w) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        folder = out / f"{k % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        crop = cv2.cvtColor(image[top : top + side, left : left + side], cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{k:07d}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, 0 if it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if line.endswith("kB")}
    return values.get("Rss", 0), values.get("Pss", 0)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; peak memory of its process tree and seconds to the first optimizer step."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first: list[float] = []
    log: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            log.append(line)
            if FIRST_STEP in line and not first:
                first.append(time.perf_counter() - started)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    peak_rss = peak_pss = peak_procs = 0
    cpu_to_first = 0.0
    while proc.poll() is None:
        tree = _tree(proc.pid)
        if not first:
            cpu_to_first = sum(_cpu_seconds(pid) for pid in tree)
        memory = [_memory_kib(pid) for pid in tree]
        peak_rss = max(peak_rss, sum(m[0] for m in memory))
        peak_pss = max(peak_pss, sum(m[1] for m in memory))
        peak_procs = max(peak_procs, sum(1 for m in memory if m[0]))
        time.sleep(0.2)
    reader.join()
    stdout = proc.stdout.read()
    if proc.returncode != 0 or not first:
        raise SystemExit(f"provq-train failed ({proc.returncode}):\n{''.join(log)[-3000:]}{stdout}")
    return {
        "seconds_to_first_step": round(first[0], 1),
        "cpu_seconds_to_first_step": round(cpu_to_first, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
        "peak_tree_pss_mib": round(peak_pss / 1024, 1),
        "peak_tree_rss_mib": round(peak_rss / 1024, 1),
        "peak_processes": peak_procs,
        "log": [line.rstrip() for line in log if "index" in line or FIRST_STEP in line or line.startswith("data:")],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=None, help="folder of source images (default: the sample photos)")
    p.add_argument("--files", type=int, default=100_000, help="image files to train on (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/check-data-scale"))
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="training steps per run (default: %(default)s)")
    args = p.parse_args()
    data = args.out / "data"
    started = time.perf_counter()
    build_folder(data, args.files, source_images(args.images))
    built = time.perf_counter() - started
    cache = args.out / "index-cache"
    for old in cache.glob("*.npz"):
        old.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    results = {
        "files": args.files,
        "workers": args.workers,
        "seconds_to_build_folder": round(built, 1),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
    }
    for name in ("index_built", "index_cached"):
        run = args.out / name
        if (run / "last.pt").exists():
            (run / "last.pt").unlink()
        cmd = [
            sys.executable, "-m", "provq.train.cli", "--data", str(data), "--out", str(run), "--device", "cpu",
            "--steps", str(args.steps), "--warmup-steps", str(args.steps // 3), "--transition-steps",
            str(args.steps // 3), "--batch-size", "16", "--crop", "64", "--eval-every", str(args.steps),
            "--workers", str(args.workers), "--index-cache", str(cache), "--val-frames", "32", "--val-size", "64",
            "--kmeans-points", "4096", "--no-progress",
        ]  # fmt: skip
        results[name] = measure(cmd, env)
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)  # partial results as they come
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
