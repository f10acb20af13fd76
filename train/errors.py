"""The one exception type for user errors in training and its command line."""

from __future__ import annotations


class ProvqError(Exception):
    """A problem with the user's input (data, checkpoint, arguments).

    The message is a single line that names the problem and how to fix it; the command line prints it without a
    traceback and exits non-zero.
    """
