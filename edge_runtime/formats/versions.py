"""Installed package versions, recorded in what provq writes (manifests, engine sidecars, benchmark reports)."""

from __future__ import annotations

import importlib.metadata
import sys


def package_version(distribution: str, module: str | None = None) -> str | None:
    """The installed version of ``distribution`` from its metadata; else the ``__version__`` of the already imported
    module ``module`` (default: named as the distribution), for packages installed outside pip such as JetPack's
    TensorRT; else None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        loaded = sys.modules.get(module or distribution)
        version = getattr(loaded, "__version__", None)
        return None if version is None else str(version)


def package_versions(distributions: tuple[str, ...] | list[str]) -> dict[str, str]:
    """{distribution: version} of those installed (by metadata), in the order given; the others are left out."""
    found = {name: package_version(name) for name in distributions}
    return {name: version for name, version in found.items() if version is not None}
