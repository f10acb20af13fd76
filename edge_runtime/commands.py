"""Entry points of the console scripts that need OpenCV (provq-run, provq-decode, provq-bench).

Each imports OpenCV first, through ``opencv_import``, so that a missing or broken ``cv2`` (a numpy 2 shadowing the
system numpy that a Jetson's OpenCV is built against) is one line naming the fix and exit status 2, not a traceback
raised while the command's modules load; then it runs the command's ``main``. OpenCV's and FFmpeg's own log levels
are set first (``console.quiet_opencv``: OpenCV reads them when it loads).
"""

from __future__ import annotations

import importlib

from .console import command_frame, quiet_opencv
from .opencv_import import import_cv2


def _load_opencv() -> int:
    import_cv2()
    return 0


def _start(prog: str, module: str) -> int:
    quiet_opencv()
    code = command_frame(prog, _load_opencv)
    if code:
        return code
    return int(importlib.import_module(f"provq.edge_runtime.{module}").main())


def run() -> int:
    """``provq-run``."""
    return _start("provq-run", "run_cli")


def decode() -> int:
    """``provq-decode``."""
    return _start("provq-decode", "decode_cli")


def bench() -> int:
    """``provq-bench``."""
    return _start("provq-bench", "bench_cli")
