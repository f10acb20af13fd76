"""``manifest.json``: what a model directory holds and how to feed it. The one definition of its schema.

A model directory (written by ``provq-export``, extended by ``provq-calibrate``)::

    manifest.json            this file
    encoder.onnx             images N x 3 x H x W float32 RGB [-1, 1] -> ids N x H/ds x W/ds int32
    decoder.onnx             ids N x h x w int32 -> images N x 3 x h*ds x w*ds float32 RGB [-1, 1]
    encoder.fp16.onnx, decoder.fp16.onnx                     FP16 body, FP32 search, same inputs and outputs
    encoder.int8.onnx, decoder.int8.onnx, calibration.json   after provq-calibrate (explicit Q/DQ, for TensorRT)
    encoder.int8-cpu.onnx, decoder.int8-cpu.onnx             after provq-calibrate (QOperator, ONNX Runtime CPU)
    engines/                 TensorRT engines built on the device, each with a .engine.json sidecar

Manifest fields::

    format "provq-model", version 1, preset, model_config {...}, downsample, codebook_size, code_dim,
    codebook_sha256 (sha256 of the K x D float32 little-endian codebook: the token streams' fingerprint),
    input {name, layout "NCHW", channels "RGB", dtype "float32", range [-1, 1]},
    tensors {encoder: {input, output}, decoder: {input, output}}, opset,
    files {precision: {"encoder": file, "decoder": file}} (precisions fp32, fp16, int8, and "int8-cpu": the int8
    calibration in ONNX Runtime's operator format for CPUs), sha256 {file: hex},
    exported_with {package: version}, source {checkpoint, checkpoint_sha256, step}, parity {..., fp16 {...}},
    gmac_per_megapixel {encoder, decoder} (multiply-accumulates per frame megapixel, counted from the FP32 ONNX
    graphs by provq.export.macs; absent in manifests written before it was recorded),
    int8 {method, frames, data_fingerprint, engine, ...} once calibrated

File names are plain names inside the model directory: a manifest cannot point anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import EdgeError

FORMAT = "provq-model"
VERSION = 1
NAME = "manifest.json"
PARTS = ("encoder", "decoder")
PRECISIONS = ("fp32", "fp16", "int8")
# INT8 in ONNX Runtime's operator format (QLinearConv and friends, uint8 activations): the same calibration as the
# Q/DQ int8 files, for ONNX Runtime on CPUs, where the Q/DQ graphs do not fuse and run slower than FP32.
# TensorRT cannot build these; it uses "int8".
CPU_INT8 = "int8-cpu"
FILE_SETS = (*PRECISIONS, CPU_INT8)


def default_model_dir() -> Path:
    """The default model's ONNX files shipped with the package (tiny preset; see train/assets/MODEL_CARD.md)."""
    return Path(str(resources.files("provq.edge_runtime") / "assets" / "model"))


def resolve_model_dir(model: str | Path) -> Path:
    """``default`` -> the shipped model directory; anything else -> that path."""
    return default_model_dir() if str(model) == "default" else Path(model).expanduser()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write bytes (or a buffer such as TensorRT's IHostMemory) so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON (indented, trailing newline) atomically: see ``write_bytes_atomic``."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _plain_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise EdgeError(f"{where}: file name {name!r} is not a plain name inside the model directory; re-export it")
    return name


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json and the directory it describes."""

    directory: Path
    data: dict[str, Any]

    @property
    def downsample(self) -> int:
        return int(self.data["downsample"])

    @property
    def codebook_size(self) -> int:
        return int(self.data["codebook_size"])

    @property
    def code_dim(self) -> int:
        return int(self.data["code_dim"])

    @property
    def codebook_sha256(self) -> str:
        return str(self.data["codebook_sha256"])

    @property
    def gmac_per_megapixel(self) -> dict[str, float] | None:
        """{"encoder": GMAC, "decoder": GMAC} per frame megapixel, or None (exported before it was recorded)."""
        compute = self.data.get("gmac_per_megapixel")
        return None if compute is None else {part: float(compute[part]) for part in PARTS}

    @property
    def token_bits(self) -> int:
        """Bits per packed token id: ceil(log2 K), at least 1."""
        return max(1, math.ceil(math.log2(self.codebook_size)))

    @property
    def precisions(self) -> list[str]:
        """Precisions with ONNX files in this directory (fp32 always; int8 after calibration)."""
        return [p for p in self.data["files"] if p in PRECISIONS]

    def has(self, file_set: str) -> bool:
        """Whether the manifest lists this file set (a precision, or CPU_INT8)."""
        return file_set in self.data["files"]

    def tensor_names(self, part: str) -> tuple[str, str]:
        """(input name, output name) of the encoder or decoder graph."""
        names = self.data["tensors"][part]
        return str(names["input"]), str(names["output"])

    def path(self, precision: str, part: str) -> Path:
        """The ONNX file of ``part`` (encoder|decoder) at ``precision``, or a one-line EdgeError naming the fix."""
        files = self.data["files"]
        if precision not in files:
            hint = (
                f"run `provq-calibrate {self.directory} --data FRAMES` first"
                if precision == "int8"
                else f"this directory has {', '.join(files)}"
            )
            raise EdgeError(f"model {self.directory} has no {precision} files: {hint}")
        name = _plain_name(files[precision].get(part), f"{self.directory / NAME}")
        path = self.directory / name
        if not path.is_file():
            raise EdgeError(f"{path} is missing (listed in {NAME}): re-run provq-export / provq-calibrate")
        return path

    def verify(self, path: Path) -> None:
        """Refuse a file whose sha256 differs from the manifest's (a partial copy or a file from another model)."""
        expected = self.data.get("sha256", {}).get(path.name)
        if expected is None:
            raise EdgeError(f"{path.name} is not listed in {self.directory / NAME}: re-run provq-export")
        if sha256_file(path) != expected:
            raise EdgeError(
                f"{path} does not match its manifest (sha256 differs): it is damaged or from another export; re-export"
            )


def load_manifest(model: str | Path) -> Manifest:
    """Read and check MODEL_DIR/manifest.json (``default``: the shipped model)."""
    directory = resolve_model_dir(model)
    path = directory / NAME
    if not directory.is_dir():
        raise EdgeError(f"model directory {directory} does not exist: pass a folder written by provq-export")
    if not path.is_file():
        raise EdgeError(f"{directory} has no {NAME}: pass a folder written by provq-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EdgeError(f"{path} is not readable JSON ({type(err).__name__}): re-run provq-export") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EdgeError(f"{path} is not a provq model manifest: pass a folder written by provq-export")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise EdgeError(f"{path} has manifest version {data.get('version')!r}; this provq reads {VERSION}: upgrade")
    required = {"downsample": int, "codebook_size": int, "code_dim": int, "codebook_sha256": str,
                "files": dict, "tensors": dict, "sha256": dict}  # fmt: skip
    for key, kind in required.items():
        if not isinstance(data.get(key), kind):
            raise EdgeError(f"{path}: field {key!r} is missing or not a {kind.__name__}; re-run provq-export")
    if data["downsample"] < 1 or data["codebook_size"] < 2 or data["code_dim"] < 1:
        raise EdgeError(f"{path}: downsample, codebook_size or code_dim out of range; re-run provq-export")
    for precision, parts in data["files"].items():
        if precision not in FILE_SETS or not isinstance(parts, dict) or set(parts) != set(PARTS):
            raise EdgeError(f"{path}: files[{precision!r}] must name an encoder and a decoder; re-run provq-export")
        for name in parts.values():
            _plain_name(name, str(path))
    if "fp32" not in data["files"]:
        raise EdgeError(f"{path}: no fp32 files listed; re-run provq-export")
    compute = data.get("gmac_per_megapixel")
    if compute is not None and not (
        isinstance(compute, dict)
        and set(compute) == set(PARTS)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in compute.values())
    ):
        raise EdgeError(f"{path}: gmac_per_megapixel must give encoder and decoder figures >= 0; re-run provq-export")
    for part in PARTS:
        names = data["tensors"].get(part)
        if not isinstance(names, dict) or not all(isinstance(names.get(k), str) for k in ("input", "output")):
            raise EdgeError(f"{path}: tensors[{part!r}] must name an input and an output; re-run provq-export")
    return Manifest(directory=directory, data=data)
