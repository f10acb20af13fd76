"""``import cv2`` with a one-line EdgeError that says how to fix a missing or broken OpenCV.

On a Jetson (and any aarch64 Debian or Ubuntu) OpenCV is the system's ``python3-opencv``, seen from a venv made with
``--system-site-packages`` and built against the system's numpy 1.x. A numpy 2 installed into the venv shadows the
system numpy, and ``import cv2`` then fails with ``ImportError: numpy.core.multiarray failed to import`` after numpy
has printed a page of explanation and a stack. ``import_cv2`` keeps that page off stderr and names the fix instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import platform
import sys
from types import ModuleType

from .errors import EdgeError

ON_ARM = platform.machine().lower() in ("aarch64", "arm64")
INSTALL_OPENCV = (
    "on a Jetson or another aarch64 Linux install the system OpenCV (sudo apt install python3-opencv) and create "
    "the venv with --system-site-packages"
    if ON_ARM
    else "pip install opencv-python-headless"
)


def _numpy_version() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return str(numpy.__version__)


def _cv2_location() -> str:
    spec = importlib.util.find_spec("cv2")
    return spec.origin if spec is not None and spec.origin else "cv2"


def explain(err: ImportError) -> str:
    """The one-line message for an ``import cv2`` that raised ``err``: what is wrong and the command that fixes it."""
    if isinstance(err, ModuleNotFoundError) and err.name == "cv2":
        return f"OpenCV (cv2) is not installed: {INSTALL_OPENCV}"
    first = " ".join(str(err).split()) or type(err).__name__
    numpy = _numpy_version()
    if "numpy" in first and numpy is not None and int(numpy.split(".")[0]) >= 2:
        return (
            f"OpenCV ({_cv2_location()}) was built against numpy 1.x, but numpy {numpy} is installed here and "
            f"shadows it ({first}): {sys.executable} -m pip install 'numpy<2'"
        )
    return f"OpenCV ({_cv2_location()}) failed to import ({first}): reinstall it; {INSTALL_OPENCV}"


def import_cv2() -> ModuleType:
    """``cv2``, or an EdgeError from ``explain``; what the import printed is shown only when it succeeded."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import cv2
    except ImportError as err:
        raise EdgeError(explain(err)) from None
    sys.stderr.write(captured.getvalue())
    return cv2
