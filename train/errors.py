"""Training's user error: the one base ``ProvqError``, defined in the runtime's ``formats.errors``."""

from __future__ import annotations

from provq.edge_runtime.formats.errors import ProvqError

__all__ = ["ProvqError"]
