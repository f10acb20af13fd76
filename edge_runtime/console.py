"""What every provq command shares on the terminal: the error frame, stop signals, quiet OpenCV, a status line and
the frame rates it shows.

``command_frame`` is the one place a user error becomes ``PROG: error: MESSAGE`` and exit 2 (no traceback), a run
stopped by a signal after saving its work exits 128 + the signal number (130 SIGINT, 143 SIGTERM), and Ctrl-C
elsewhere exits 130. Every console script runs its body inside it (``run_command`` adds argument parsing).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .formats.errors import ProvqError

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


class RecentRates:
    """Frames per second over the last few progress calls (the pipelines call every 0.5 s: 5 calls span 2 s), for
    each of several frame counts."""

    def __init__(self, calls: int = 5) -> None:
        self._recent: deque[tuple[float, list[int]]] = deque(maxlen=calls)  # (elapsed s, counts)

    def update(self, elapsed_s: float, counts: list[int]) -> list[str]:
        """Each count's rate since the oldest call kept, as "12.3"; "-" while no time has passed."""
        self._recent.append((elapsed_s, counts))
        t0, n0 = self._recent[0]
        dt = elapsed_s - t0
        return [f"{(n - m) / dt:.1f}" if dt > 0 else "-" for n, m in zip(counts, n0, strict=True)]


class Stopped(Exception):
    """A run ended early by SIGINT or SIGTERM after saving its work; the message says how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextmanager
def stop_on_signals(stop: Callable[[], None] | None = None, *, second_interrupt: bool = True) -> Iterator[list[str]]:
    """While active, SIGINT and SIGTERM are recorded (and call ``stop``, if given) instead of killing the process;
    yields the list of signal names received ("SIGINT", "SIGTERM"). With ``second_interrupt`` a second SIGINT raises
    KeyboardInterrupt as usual (an impatient Ctrl-C); without it every signal is only recorded. Outside the main
    thread (where Python cannot install handlers) nothing is installed and the signals keep their usual effect."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if signum == signal.SIGINT and second_interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if stop is not None:
            stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def command_parser(
    prog: str, description: str, doc: str, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The argument parser every command starts from: its name, a one-line description and, as the epilog, the
    examples of the command module's docstring ``doc`` (everything after its first two lines), kept as written."""
    return parser_class(
        prog=prog,
        description=description,
        epilog=doc.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def command_frame(prog: str, body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run ``body`` and return its exit code; a ProvqError is one line ``PROG: error: MESSAGE`` and exit 2, a
    Stopped its message and 128 + its signal number, a KeyboardInterrupt ``PROG: interrupted`` and 130."""
    try:
        return body()
    except ProvqError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def run_command(
    prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
    argv: list[str] | None, interrupted: str = "interrupted", *, log_format: str | None = None,
    log_level: int = logging.WARNING,
) -> int:  # fmt: skip
    """Quiet OpenCV, parse ``argv``, set up logging (default format ``PROG: message``) and run ``body(args)`` in
    ``command_frame``."""
    quiet_opencv()
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level, format=log_format or f"{prog}: %(message)s")
    return command_frame(prog, lambda: body(args), interrupted)
