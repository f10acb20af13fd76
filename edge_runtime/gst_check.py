"""Whether a GStreamer pipeline parses, asked of GStreamer itself through PyGObject when it is installed.

OpenCV's GStreamer backend reports a pipeline it cannot build only as "not opened" (and GStreamer prints a
GStreamer-CRITICAL line on its way out), so a gst:// pipeline is parsed here first: an unknown element or a syntax
error becomes one line that names it. PyGObject (``python3-gi``) comes with the system Python that a Jetson's OpenCV
belongs to; where it is absent nothing is checked here and OpenCV's open decides.
"""

from __future__ import annotations


def parse_problem(pipeline: str) -> str | None:
    """GStreamer's message when ``pipeline`` does not parse (a missing element, bad syntax); None when it parses or
    when PyGObject is not there to ask. The parsed pipeline is discarded without being started."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import GLib, Gst
    except (ImportError, ValueError):
        return None
    if not Gst.is_initialized():
        Gst.init(None)
    try:
        parsed = Gst.parse_launch(pipeline)
    except GLib.Error as err:
        return " ".join(str(err.message).split()) or "GStreamer cannot parse it"
    parsed.set_state(Gst.State.NULL)
    return None
