"""The runtime's user error (sources, models, token streams, engines): defined with its base in ``formats.errors``."""

from __future__ import annotations

from .formats.errors import EdgeError, ProvqError

__all__ = ["EdgeError", "ProvqError"]
