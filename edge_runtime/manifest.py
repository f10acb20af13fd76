"""A model directory and its manifest.json: where each ONNX file is, and whether it is intact.

The manifest's schema, reader and writer are ``formats.manifest`` (the directory layout and every field are listed
there); this module adds the directory: the shipped default model, file paths by precision, sha256 checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any

from .errors import EdgeError
from .formats.files import sha256_file, write_bytes_atomic, write_json_atomic
from .formats.manifest import (
    CPU_INT8,
    FILE_SETS,
    FORMAT,
    NAME,
    PARTS,
    PRECISIONS,
    VERSION,
    ModelManifest,
    plain_name,
    read_manifest,
)

__all__ = [
    "CPU_INT8", "FILE_SETS", "FORMAT", "NAME", "PARTS", "PRECISIONS", "VERSION", "Manifest", "ModelManifest",
    "default_model_dir", "load_manifest", "resolve_model_dir", "sha256_file", "write_bytes_atomic",
    "write_json_atomic",
]  # fmt: skip


def default_model_dir() -> Path:
    """The default model's ONNX files shipped with the package (tiny preset; see train/assets/MODEL_CARD.md)."""
    return Path(str(resources.files("provq.edge_runtime") / "assets" / "model"))


def resolve_model_dir(model: str | Path) -> Path:
    """``default`` -> the shipped model directory; anything else -> that path."""
    return default_model_dir() if str(model) == "default" else Path(model).expanduser()


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json (``fields``) and the directory it describes."""

    directory: Path
    fields: ModelManifest

    @property
    def data(self) -> dict[str, Any]:
        """The manifest as its JSON object (read-only view: change ``fields`` with dataclasses.replace)."""
        return self.fields.to_json()

    # The fields every user of a model reads, straight from ``fields``.
    downsample = property(attrgetter("fields.downsample"), doc="int: pixels per token id along each side")
    codebook_size = property(attrgetter("fields.codebook_size"), doc="int: K, ids are in [0, K)")
    code_dim = property(attrgetter("fields.code_dim"), doc="int: D, the length of each code")
    codebook_sha256 = property(attrgetter("fields.codebook_sha256"), doc="str: the codebook's fingerprint")

    @property
    def gmac_per_megapixel(self) -> dict[str, float] | None:
        """{"encoder": GMAC, "decoder": GMAC} per frame megapixel, or None (exported before it was recorded)."""
        compute = self.fields.gmac_per_megapixel
        return None if compute is None else {part: float(compute[part]) for part in PARTS}

    @property
    def token_bits(self) -> int:
        """Bits per packed token id: ceil(log2 K), at least 1."""
        return max(1, math.ceil(math.log2(self.codebook_size)))

    @property
    def precisions(self) -> list[str]:
        """Precisions with ONNX files in this directory (fp32 always; int8 after calibration)."""
        return [p for p in self.fields.files if p in PRECISIONS]

    @property
    def model_of_record(self) -> str:
        """The precision whose ids are this model's tokens: "fp32", or "int8" for a quantization-aware model (its
        Q/DQ files, run as written, compute the fake-quantized network it was trained as)."""
        return self.fields.model_of_record or "fp32"

    def has(self, file_set: str) -> bool:
        """Whether the manifest lists this file set (a precision, or CPU_INT8)."""
        return file_set in self.fields.files

    def tensor_names(self, part: str) -> tuple[str, str]:
        """(input name, output name) of the encoder or decoder graph."""
        names = self.fields.tensors[part]
        return str(names["input"]), str(names["output"])

    def path(self, precision: str, part: str) -> Path:
        """The ONNX file of ``part`` (encoder|decoder) at ``precision``, or a one-line EdgeError naming the fix."""
        files = self.fields.files
        if precision not in files:
            hint = (
                f"run `provq-calibrate {self.directory} --data FRAMES` first"
                if precision == "int8"
                else f"this directory has {', '.join(files)}"
            )
            raise EdgeError(f"model {self.directory} has no {precision} files: {hint}")
        name = plain_name(files[precision].get(part), f"{self.directory / NAME}")
        path = self.directory / name
        if not path.is_file():
            raise EdgeError(f"{path} is missing (listed in {NAME}): re-run provq-export / provq-calibrate")
        return path

    def verify(self, path: Path) -> None:
        """Refuse a file whose sha256 differs from the manifest's (a partial copy or a file from another model)."""
        expected = self.fields.sha256.get(path.name)
        if expected is None:
            raise EdgeError(f"{path.name} is not listed in {self.directory / NAME}: re-run provq-export")
        if sha256_file(path) != expected:
            raise EdgeError(
                f"{path} does not match its manifest (sha256 differs): it is damaged or from another export; re-export"
            )


def load_manifest(model: str | Path) -> Manifest:
    """Read and check MODEL_DIR/manifest.json (``default``: the shipped model); a one-line EdgeError otherwise."""
    directory = resolve_model_dir(model)
    return Manifest(directory=directory, fields=read_manifest(directory))
