"""What an engine is built for: the CUDA device and L4T release it runs on, and the TensorRT module (imported
lazily: the runtime works without it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

from .errors import EdgeError

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
TRT_MISSING = (
    "tensorrt is not installed: on a Jetson use JetPack's python3-libnvinfer (create the venv with "
    "--system-site-packages)"
)


class _CudaDevice(Protocol):
    def device_properties(self) -> tuple[str, tuple[int, int]]: ...


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU (and Jetson release) an engine is built on or run on."""

    name: str  # cudaDeviceProp.name, e.g. "Orin", "NVIDIA H200"
    compute_capability: tuple[int, int]  # e.g. (8, 7)
    l4t: str | None = None  # L4T release from /etc/nv_tegra_release, e.g. "36.4.3"; None off Jetson

    @property
    def cc(self) -> str:
        """Compute capability as text: ``"8.7"``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def tag(self) -> str:
        """File-name form: ``orin-sm87``, ``h200-sm90`` (lower case, 'NVIDIA' dropped, other characters -> '-')."""
        name = re.sub(r"nvidia", "", self.name.lower())
        name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:32].strip("-") or "gpu"
        return f"{name}-sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def __str__(self) -> str:
        return f"{self.name} sm{self.compute_capability[0]}{self.compute_capability[1]}"


def read_l4t(path: Path | None = None) -> str | None:
    """The L4T release from ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.3, ...`` -> "36.4.3"), or
    None where the file is absent or unreadable (not a Jetson)."""
    try:
        text = (path or TEGRA_RELEASE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else None


def probe_device(cuda: _CudaDevice, tegra_release: Path | None = None) -> DeviceInfo:
    """Name and compute capability of the current CUDA device (through the cuda_shim ``CudaRuntime``), plus L4T."""
    from .cuda_shim import CudaError

    try:
        name, cc = cuda.device_properties()
    except CudaError as err:
        raise EdgeError(f"no usable CUDA device ({err}): check the driver and that a GPU is visible") from None
    return DeviceInfo(name=name, compute_capability=cc, l4t=read_l4t(tegra_release))


# -- TensorRT ------------------------------------------------------------------------------------------------------


def import_tensorrt(hint: str = "") -> ModuleType:
    """``import tensorrt`` (lazily), or a one-line EdgeError: not installed (with ``hint`` appended) or broken."""
    try:
        import tensorrt
    except ModuleNotFoundError as err:
        if err.name != "tensorrt":  # tensorrt is there but something it needs is not
            raise EdgeError(f"tensorrt failed to import: {err}") from None
        raise EdgeError(TRT_MISSING + hint) from None
    except (ImportError, OSError) as err:  # e.g. a missing libnvinfer / libnvdla_compiler shared library
        raise EdgeError(f"tensorrt failed to import: {' '.join(str(err).split())}") from None
    version = str(getattr(tensorrt, "__version__", "0"))
    if trt_major(version) < 10:
        raise EdgeError(f"TensorRT {version} is too old: provq needs TensorRT 10.3 or newer (JetPack 6.1+)")
    return tensorrt


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``"10.3.0.30"`` -> 10)."""
    head = str(version).split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def trt_short(version: str) -> str:
    """The first three components of a version string, for file names (``"10.3.0.30"`` -> ``"10.3.0"``)."""
    return ".".join(str(version).split(".")[:3])
