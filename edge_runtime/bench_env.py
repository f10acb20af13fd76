"""Where provq-bench measured: CPU, cores, GPUs, Jetson model, package versions, memory."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .formats.versions import package_version

try:
    import resource
except ImportError:  # not POSIX: no peak RSS
    resource = None


def memory_mb() -> dict[str, float | None]:
    """{"rss_mb": current resident memory, "peak_rss_mb": the process's peak so far} in MiB (None where unknown)."""
    peak = None
    if resource is not None:
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
    current = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"rss_mb": current, "peak_rss_mb": peak}


def _cpu_model() -> str:
    """'AMD EPYC 9R14' from /proc/cpuinfo (model name, or on ARM the Hardware/Model line), else platform's guess."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpus() -> list[str] | None:
    """``nvidia-smi`` names and memory of the GPUs, or None without nvidia-smi (Jetsons have none)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return lines if done.returncode == 0 and lines else None


def _jetson_model() -> str | None:
    """/proc/device-tree/model on a Jetson (e.g. 'NVIDIA Jetson Orin Nano Developer Kit'), else None."""
    try:
        return Path("/proc/device-tree/model").read_bytes().rstrip(b"\x00").decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def environment(threads: int | None) -> dict[str, Any]:
    """Where the figures were measured: CPU, cores, threads, GPU, Jetson model, versions and the date (UTC)."""
    import onnxruntime

    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "cores": os.cpu_count(),
        "threads": threads,  # None: each backend's default (ONNX Runtime: one per physical core)
        "gpu": _gpus(),
        "jetson": _jetson_model(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "versions": {
            "provq": package_version("provq"),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tensorrt": package_version("tensorrt"),
            "torch": package_version("torch") if "torch" in sys.modules and sys.modules["torch"] is not None else None,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
