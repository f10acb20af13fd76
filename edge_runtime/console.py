"""What provq-run and provq-decode share on the terminal: quiet OpenCV, a rate-limited status line, stop signals."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .errors import EdgeError

TTY_EVERY_S = 0.5  # a terminal's status line is rewritten at most this often
LOG_EVERY_S = 5.0  # elsewhere (a log file, a pipe) one line this often


def quiet_opencv() -> None:
    """Keep OpenCV's and FFmpeg's own messages off stderr (call before cv2 is imported; the user's values win)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class StatusLine:
    """One status line on stderr: rewritten in place on a terminal, otherwise printed as a new line now and then."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._every_s = TTY_EVERY_S if self.tty else LOG_EVERY_S
        self._next = time.monotonic() + (0 if self.tty else LOG_EVERY_S)
        self._shown = False

    def update(self, text: str) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._every_s
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        """End the in-place line so that what follows starts on its own line."""
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[list[str]]:
    """While active, SIGINT and SIGTERM call ``stop`` instead of killing the process; yields the list of signal
    names received. After the first SIGINT a second one raises KeyboardInterrupt as usual (an impatient Ctrl-C).
    Outside the main thread (where Python cannot install handlers) nothing is installed."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_command(
    prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
    argv: list[str] | None, interrupted: str = "interrupted",
) -> int:  # fmt: skip
    """The shared frame of provq-run and provq-decode: quiet OpenCV, parse, run ``body``; a user error is one line
    and exit 2, Ctrl-C exit 130 with ``interrupted``."""
    quiet_opencv()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    try:
        return body(args)
    except EdgeError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
