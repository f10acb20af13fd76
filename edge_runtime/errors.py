"""The one exception type for user errors in the runtime (sources, models, token streams, engines)."""

from __future__ import annotations


class EdgeError(Exception):
    """A problem with the user's input: a missing or corrupt file, an unknown URI, a model that does not match.

    The message is a single line that names the problem and how to fix it; the command line prints it without a
    traceback and exits non-zero.
    """
