"""provq-bench's arguments that need more than argparse: name lists, sizes, and ``--floor`` figures checked
against a report."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import preprocess
from .bench import BACKENDS, ROW_PRECISIONS
from .errors import EdgeError
from .quality import SSIM_WINDOW

# --floor metrics and their direction: True = higher is better (the value is a floor), False = lower is better
# (the value is a ceiling: latency, bytes, memory).
FLOOR_METRICS = {
    "fps": True, "psnr_db": True, "ssim": True, "token_agreement": True, "speedup_vs_fp32": True,
    "latency_ms_p50": False, "latency_ms_p95": False, "latency_ms_p99": False,
    "bytes_per_frame": False, "bytes_per_frame_plain": False, "peak_rss_mb": False,
}  # fmt: skip


def parse_names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"onnxruntime,tensorrt"`` -> ("onnxruntime", "tensorrt"); EdgeError naming an unknown entry (with a guess)."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if not names:
        raise EdgeError(f"no {what} given: use a comma-separated list of {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            guess = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            raise EdgeError(f"unknown {what} {name!r}: use {', '.join(allowed)}{hint}")
    return tuple(dict.fromkeys(names))


def parse_size(text: str) -> tuple[int, int]:
    """``"256x192"`` -> (256, 192), width first, at least the SSIM window a side; EdgeError on anything else."""
    width, height = preprocess.parse_size(text)
    if min(width, height) < SSIM_WINDOW:
        raise EdgeError(f"--size {text} is too small: at least {SSIM_WINDOW} pixels a side")
    return width, height


@dataclass(frozen=True)
class Floor:
    """``--floor [backend/precision:]metric=value``: a figure every row that ran (or the named row) must reach."""

    metric: str
    value: float
    backend: str | None = None  # None: every row that ran
    precision: str | None = None

    @property
    def text(self) -> str:
        scope = f"{self.backend}/{self.precision}:" if self.backend else ""
        return f"{scope}{self.metric}={self.value:g}"


def parse_floor(text: str) -> Floor:
    """``"fps=30"`` or ``"onnxruntime/int8:fps=30"`` -> Floor; EdgeError for a bad form or an unknown metric."""
    scope, _, claim = text.rpartition(":")
    metric, sep, value = claim.partition("=")
    metric = metric.strip()
    if not sep or not metric:
        raise EdgeError(f"--floor {text!r}: expected metric=value such as fps=30 or onnxruntime/int8:fps=30")
    if metric not in FLOOR_METRICS:
        guess = difflib.get_close_matches(metric, FLOOR_METRICS, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise EdgeError(f"--floor {text!r}: unknown metric {metric!r}: use {', '.join(FLOOR_METRICS)}{hint}")
    try:
        number = float(value)
    except ValueError:
        raise EdgeError(f"--floor {text!r}: {value!r} is not a number") from None
    if not np.isfinite(number):
        raise EdgeError(f"--floor {text!r}: the value must be finite")
    if not scope:
        return Floor(metric, number)
    backend, slash, precision = scope.partition("/")
    if not slash or backend not in BACKENDS or precision not in ROW_PRECISIONS:
        raise EdgeError(
            f"--floor {text!r}: the row must be BACKEND/PRECISION with a backend of {', '.join(BACKENDS)} and a "
            f"precision of {', '.join(ROW_PRECISIONS)}"
        )
    return Floor(metric, number, backend, precision)


def check_floors(report: dict[str, Any], floors: Sequence[Floor]) -> list[str]:
    """One line per floor missed, e.g. ``onnxruntime/int8 fps 24.1 is below the floor 30``; empty when all pass.

    An unscoped floor applies to the rows that ran; a scoped floor also fails when its row did not run.
    """
    failures = []
    for floor in floors:
        for row in report["rows"]:
            name = f"{row['backend']}/{row['precision']}"
            if floor.backend is not None and (row["backend"], row["precision"]) != (floor.backend, floor.precision):
                continue
            if row["status"] != "ok":
                if floor.backend is not None:
                    failures.append(f"{name} {floor.metric}: the row did not run ({row['status']})")
                continue
            value = row[floor.metric]
            higher_is_better = FLOOR_METRICS[floor.metric]
            if value is None:
                failures.append(f"{name} {floor.metric} was not measured (floor {floor.value:g})")
            elif higher_is_better and value < floor.value:
                failures.append(f"{name} {floor.metric} {value:.4g} is below the floor {floor.value:g}")
            elif not higher_is_better and value > floor.value:
                failures.append(f"{name} {floor.metric} {value:.4g} is above the ceiling {floor.value:g}")
    return failures
