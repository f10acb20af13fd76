"""The one base of provq's user errors, and the runtime's subclass of it."""

from __future__ import annotations


class ProvqError(Exception):
    """A problem with the user's input (data, checkpoint, model directory, token stream, arguments).

    The message is a single line that names the problem and how to fix it; every provq command prints it without a
    traceback and exits 2 (``provq.edge_runtime.console.run_command``). Training raises it directly; the runtime
    raises its subclass ``provq.edge_runtime.errors.EdgeError``; an ``except ProvqError`` catches both.
    """


class EdgeError(ProvqError):
    """A ProvqError raised by the runtime and the shared formats: a missing or corrupt file, an unknown URI, a model
    that does not match."""
