"""``manifest.json``: what a model directory holds and how to feed it. One typed schema, one reader, one writer.

``provq-export`` writes it (``write_manifest``), ``provq-calibrate`` updates it (``dataclasses.replace`` on the
read schema, then ``write_manifest``) and the runtime reads it (``read_manifest``), which validates every field it
relies on and keeps any field it does not know, so a manifest round-trips unchanged.

A model directory::

    manifest.json            this file
    codebook.f32             the K x D codebook, raw float32 little-endian (sha256: the manifest's codebook_sha256);
                             what token streams are coded against, read without onnx (absent before it was written)
    encoder.onnx             images N x 3 x H x W float32 RGB [-1, 1] -> ids N x H/ds x W/ds int32
    decoder.onnx             ids N x h x w int32 -> images N x 3 x h*ds x w*ds float32 RGB [-1, 1]
    encoder.fp16.onnx, decoder.fp16.onnx                     FP16 body, FP32 search, same inputs and outputs
    encoder.int8.onnx, decoder.int8.onnx, calibration.json   after provq-calibrate (explicit Q/DQ, for TensorRT)
    encoder.int8-cpu.onnx, decoder.int8-cpu.onnx             after provq-calibrate (QOperator, ONNX Runtime CPU)
    engines/                 TensorRT engines built on the device, each with a .engine.json sidecar

Fields (``ModelManifest``)::

    format "provq-model", version 1, preset, model_config {...}, downsample, codebook_size, code_dim,
    codebook_sha256 (sha256 of the K x D float32 little-endian codebook: the token streams' fingerprint),
    input {name, layout "NCHW", channels "RGB", dtype "float32", range [-1, 1]}, output {name, layout, dtype},
    tensors {encoder: {input, output}, decoder: {input, output}}, opset,
    files {file set: {"encoder": file, "decoder": file}} (file sets fp32, fp16, int8, and "int8-cpu": the int8
    calibration in ONNX Runtime's operator format for CPUs), sha256 {file: hex},
    exported_with {package: version}, source {checkpoint, checkpoint_sha256, step}, parity {..., fp16 {...}},
    gmac_per_megapixel {encoder, decoder} (multiply-accumulates per frame megapixel, counted from the FP32 ONNX
    graphs by provq.export.macs; absent in manifests written before it was recorded),
    int8 {method, engine, frames, data, data_fingerprint, size, token_agreement, psnr_drop_db, fp16_encoder}
    once calibrated (method "qat" for a quantization-aware model: its trained scales, no calibration),
    model_of_record (the file set whose ids are the model's tokens, which every precision is compared with:
    absent = "fp32"; "int8" for a quantization-aware model, whose fake-quantized network is the model of record and
    whose Q/DQ files, run as written, compute it)

File names are plain names inside the model directory: a manifest cannot point anywhere else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeError
from .files import write_bytes_atomic, write_json_atomic
from .graph import IDS, IMAGES

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

INPUT = {"name": IMAGES, "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [-1.0, 1.0]}
OUTPUT = {"name": IDS, "layout": "N x H/ds x W/ds", "dtype": "int32"}
TENSORS = {"encoder": {"input": IMAGES, "output": IDS}, "decoder": {"input": IDS, "output": IMAGES}}


CODEBOOK_FILE = "codebook.f32"  # the K x D codebook, raw float32 little-endian: its sha256 is codebook_sha256


def write_codebook(directory: Path, codebook: np.ndarray) -> Path:
    """Write ``CODEBOOK_FILE`` (K x D float32 little-endian, raw) into a model directory, atomically."""
    path = directory / CODEBOOK_FILE
    write_bytes_atomic(path, np.ascontiguousarray(codebook, dtype="<f4").tobytes())
    return path


def codebook_sha256(codebook: np.ndarray) -> str:
    """sha256 of the K x D codebook as float32 little-endian bytes: the fingerprint manifests and token streams
    carry."""
    return hashlib.sha256(np.ascontiguousarray(codebook, dtype="<f4").tobytes()).hexdigest()


def plain_name(name: object, where: str) -> str:
    """``name`` if it is a plain file name (no folder, not . or ..); otherwise a one-line EdgeError."""
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise EdgeError(f"{where}: file name {name!r} is not a plain name inside the model directory; re-export it")
    return name


@dataclass(frozen=True)
class ModelManifest:
    """The fields of manifest.json (see the module docstring); ``extra`` holds fields this provq does not know.
    A field that is None is absent from the file (manifests written before it was recorded)."""

    downsample: int
    codebook_size: int
    code_dim: int
    codebook_sha256: str
    files: dict[str, dict[str, str]]
    sha256: dict[str, str]
    tensors: dict[str, dict[str, str]] = field(default_factory=lambda: {p: dict(n) for p, n in TENSORS.items()})
    preset: str | None = None
    model_config: dict[str, Any] | None = None
    input: dict[str, Any] | None = field(default_factory=lambda: dict(INPUT))
    output: dict[str, Any] | None = field(default_factory=lambda: dict(OUTPUT))
    opset: int | None = None
    exported_with: dict[str, str] | None = None
    source: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    gmac_per_megapixel: dict[str, float] | None = None
    int8: dict[str, Any] | None = None
    model_of_record: str | None = None
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest.json object: format and version first, then the fields in schema order, then ``extra``.
        Optional fields that are None are left out."""
        out: dict[str, Any] = {"format": FORMAT, "version": self.version}
        for name in _ORDER:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out | {k: v for k, v in self.extra.items() if k not in out}

    @classmethod
    def from_json(cls, data: object, where: str) -> ModelManifest:
        """Validate a parsed manifest.json (``where`` names it in errors); a one-line EdgeError otherwise."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdgeError(f"{where} is not a provq model manifest: pass a folder written by provq-export")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise EdgeError(
                f"{where} has manifest version {data.get('version')!r}; this provq reads {VERSION}: upgrade"
            )
        required = {"downsample": int, "codebook_size": int, "code_dim": int, "codebook_sha256": str,
                    "files": dict, "tensors": dict, "sha256": dict}  # fmt: skip
        for key, kind in required.items():
            if not isinstance(data.get(key), kind):
                raise EdgeError(f"{where}: field {key!r} is missing or not a {kind.__name__}; re-run provq-export")
        if data["downsample"] < 1 or data["codebook_size"] < 2 or data["code_dim"] < 1:
            raise EdgeError(f"{where}: downsample, codebook_size or code_dim out of range; re-run provq-export")
        for file_set, parts in data["files"].items():
            if file_set not in FILE_SETS or not isinstance(parts, dict) or set(parts) != set(PARTS):
                raise EdgeError(f"{where}: files[{file_set!r}] must name an encoder and a decoder; re-run provq-export")
            for name in parts.values():
                plain_name(name, where)
        if "fp32" not in data["files"]:
            raise EdgeError(f"{where}: no fp32 files listed; re-run provq-export")
        record = data.get("model_of_record")
        if record is not None and (record not in PRECISIONS or record not in data["files"]):
            raise EdgeError(f"{where}: model_of_record {record!r} names no file set of this model; re-run provq-export")
        compute = data.get("gmac_per_megapixel")
        if compute is not None and not (
            isinstance(compute, dict)
            and set(compute) == set(PARTS)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in compute.values())
        ):
            raise EdgeError(
                f"{where}: gmac_per_megapixel must give encoder and decoder figures >= 0; re-run provq-export"
            )
        for part in PARTS:
            names = data["tensors"].get(part)
            if not isinstance(names, dict) or not all(isinstance(names.get(k), str) for k in ("input", "output")):
                raise EdgeError(f"{where}: tensors[{part!r}] must name an input and an output; re-run provq-export")
        known = {name: data.get(name) for name in _ORDER}
        extra = {k: v for k, v in data.items() if k not in known and k not in ("format", "version")}
        return cls(**known, version=data["version"], extra=extra)


_ORDER = (
    "preset", "model_config", "downsample", "codebook_size", "code_dim", "codebook_sha256", "input", "output",
    "tensors", "opset", "files", "sha256", "exported_with", "source", "parity", "gmac_per_megapixel", "int8",
    "model_of_record",
)  # fmt: skip


def read_manifest(directory: Path) -> ModelManifest:
    """Read and validate DIRECTORY/manifest.json; a one-line EdgeError naming the problem otherwise."""
    path = directory / NAME
    if not directory.is_dir():
        raise EdgeError(f"model directory {directory} does not exist: pass a folder written by provq-export")
    if not path.is_file():
        raise EdgeError(f"{directory} has no {NAME}: pass a folder written by provq-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EdgeError(f"{path} is not readable JSON ({type(err).__name__}): re-run provq-export") from None
    return ModelManifest.from_json(data, str(path))


def write_manifest(directory: Path, manifest: ModelManifest) -> Path:
    """Write DIRECTORY/manifest.json atomically (validated first, so a writer cannot produce what a reader refuses)."""
    data = manifest.to_json()
    path = directory / NAME
    ModelManifest.from_json(data, str(path))
    write_json_atomic(path, data)
    return path
