"""TensorRT engine cache: the engine file name (the cache key) and its ``.engine.json`` sidecar. The one definition.

A serialized TensorRT engine only runs on the device model, TensorRT version and (on Jetson) L4T release it was built
with, and only for the input shapes of its optimization profile. So each engine in ``MODEL_DIR/engines/`` is named
after everything that makes it a different engine::

    <codebook sha256[:8]>.<part>.<precision>.<shapes>.<device>-sm<cc>.trt<x.y.z>[.dla<N>].engine
    3f9a01c2.encoder.int8.b1-4x256x256.orin-sm87.trt10.3.0.engine

``<shapes>`` is the image-side profile N x H x W (channels are always 3): one number where min == max, ``min-max``
where it is dynamic, and ``o<N>x<H>x<W>`` appended when the opt shape is not the max. It is written in image
pixels for both parts, so an encoder and a decoder built for the same frames share it (the decoder's own input is
N x H/ds x W/ds token ids).

Beside it, ``<engine file>.json`` (so ``….engine.json``) records what it was built from and for::

    format "provq-engine", version 1, tensorrt_version (full, e.g. "10.3.0.30"), device_name, compute_capability
    "8.7", l4t ("36.4.3" from /etc/nv_tegra_release, null off Jetson), jetpack (null: L4T names the release
    exactly), precision, part, profile {input, min, opt, max} (the engine input tensor's shapes), dla_core (or
    null), onnx_file, onnx_sha256, codebook_sha256, strongly_typed, built_with (provq version), created (UTC ISO)

The builder writes both; the runtime calls ``check_sidecar`` before deserializing and refuses, in one line with the
exact rebuild command, an engine made for another device, TensorRT, L4T, ONNX file or codebook.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .engine_device import (
    DeviceInfo,
    trt_major,
    trt_short,
)
from .engine_shapes import (
    ShapeProfile,
    format_shape,
    image_shape,
    parse_shape_tag,
    shape_tag,
)
from .errors import EdgeError
from .formats.versions import package_version
from .manifest import PARTS, PRECISIONS, Manifest, write_json_atomic

FORMAT = "provq-engine"
VERSION = 1


# -- which ONNX an engine is built from ----------------------------------------------------------------------------


def onnx_source(manifest: Manifest, part: str, precision: str, trt_version: str) -> tuple[str, bool]:
    """(ONNX file name in the model directory, whether the FP16 builder flag is needed) for an engine.

    int8 and fp32 build from their own files. fp16 builds from an FP16 ONNX listed as ``files.fp16`` when the model
    has one (strongly typed, any TensorRT); otherwise, on TensorRT 10.x only, from the FP32 ONNX with the FP16
    builder flag. TensorRT 11 removed that flag, so there the FP16 ONNX is required.
    """
    files = manifest.data["files"]
    if precision in files:
        return str(files[precision][part]), False
    if precision == "int8":
        manifest.path("int8", part)  # raises the "run provq-calibrate first" line
    if precision == "fp16" and trt_major(trt_version) == 10:
        return str(files["fp32"][part]), True
    if precision == "fp16":
        raise EdgeError(
            f"TensorRT {trt_short(trt_version)} has no FP16 builder flag and {manifest.directory} has no FP16 ONNX "
            "files (exported before provq-export wrote them): export the model again, or build --precision int8 or "
            "fp32"
        )
    raise EdgeError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


# -- names and the sidecar -----------------------------------------------------------------------------------------


def engine_file_name(
    manifest: Manifest,
    part: str,
    precision: str,
    images: ShapeProfile,
    *,
    device: DeviceInfo,
    trt_version: str,
    dla_core: int | None = None,
) -> str:
    """The cache key as a file name, e.g. ``3f9a01c2.encoder.int8.b1-4x256x256.orin-sm87.trt10.3.0.engine``."""
    if part not in PARTS or precision not in PRECISIONS:
        raise EdgeError(f"part must be one of {PARTS} and precision one of {PRECISIONS}; got {part}, {precision}")
    model = re.sub(r"[^0-9a-f]", "", manifest.codebook_sha256.lower())[:8] or "model"
    dla = f".dla{int(dla_core)}" if dla_core is not None else ""
    return f"{model}.{part}.{precision}.{shape_tag(images)}.{device.tag}.trt{trt_short(trt_version)}{dla}.engine"


_NAME = re.compile(
    r"^(?P<model>[0-9a-z]+)\.(?P<part>encoder|decoder)\.(?P<precision>fp32|fp16|int8)\.(?P<shapes>[^.]+)\."
    r"(?P<device>[^.]+)\.trt(?P<trt>\d+(?:\.\d+)*)(?:\.dla(?P<dla>\d+))?\.engine$"
)


def parse_engine_file_name(name: str) -> dict[str, Any] | None:
    """The parts of an ``engine_file_name`` (model, part, precision, images profile, device, trt, dla_core), or None."""
    m = _NAME.match(name)
    if m is None:
        return None
    return {
        "model": m["model"],
        "part": m["part"],
        "precision": m["precision"],
        "images": parse_shape_tag(m["shapes"]),
        "device": m["device"],
        "trt": m["trt"],
        "dla_core": None if m["dla"] is None else int(m["dla"]),
    }


def sidecar_path(engine_path: Path) -> Path:
    """``x.engine`` -> ``x.engine.json``."""
    return engine_path.with_name(engine_path.name + ".json")


def provq_version() -> str:
    """The installed provq version, or "unknown"."""
    return package_version("provq") or "unknown"


@dataclass(frozen=True)
class EngineMeta:
    """The content of an ``.engine.json`` sidecar (see the module docstring for the fields)."""

    tensorrt_version: str
    device_name: str
    compute_capability: str
    l4t: str | None
    jetpack: str | None
    precision: str
    part: str
    profile: dict[str, Any]  # {"input": name, "min": [...], "opt": [...], "max": [...]}
    dla_core: int | None
    onnx_file: str
    onnx_sha256: str
    codebook_sha256: str
    strongly_typed: bool
    built_with: str
    created: str

    def to_json(self) -> dict[str, Any]:
        """The sidecar as a JSON object (format and version first)."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> EngineMeta:
        """Parse a sidecar; EdgeError naming the file when it is not one this provq reads."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise EdgeError(f"{where} is not a provq engine sidecar (format {FORMAT} v{VERSION})")
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except KeyError as err:
            raise EdgeError(f"{where}: field {err.args[0]!r} is missing") from None

    @property
    def input_profile(self) -> ShapeProfile:
        """The engine input's profile from the sidecar."""
        p = self.profile
        return ShapeProfile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))


def make_meta(
    manifest: Manifest,
    *,
    part: str,
    precision: str,
    input_name: str,
    profile: ShapeProfile,
    device: DeviceInfo,
    trt_version: str,
    dla_core: int | None,
    onnx_file: str,
    onnx_sha256: str,
    strongly_typed: bool,
) -> EngineMeta:
    """The sidecar for an engine that was just built."""
    return EngineMeta(
        tensorrt_version=str(trt_version),
        device_name=device.name,
        compute_capability=device.cc,
        l4t=device.l4t,
        jetpack=None,
        precision=precision,
        part=part,
        profile={"input": input_name, "min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)},
        dla_core=dla_core,
        onnx_file=onnx_file,
        onnx_sha256=onnx_sha256,
        codebook_sha256=manifest.codebook_sha256,
        strongly_typed=strongly_typed,
        built_with=provq_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_sidecar(engine_path: Path, meta: EngineMeta) -> Path:
    """Write ``<engine>.json`` atomically; returns its path."""
    path = sidecar_path(engine_path)
    write_json_atomic(path, meta.to_json())
    return path


def read_sidecar(engine_path: Path) -> EngineMeta:
    """Read ``<engine>.json``; EdgeError when it is unreadable or not a sidecar."""
    path = sidecar_path(engine_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EdgeError(f"{path} is not readable JSON ({type(err).__name__})") from None
    return EngineMeta.from_json(data, path)


def rebuild_command(
    manifest: Manifest,
    part: str,
    precision: str,
    images: ShapeProfile | None = None,
    *,
    dla_core: int | None = None,
    rebuild: bool = True,
) -> str:
    """The ``provq-export engine`` command line that builds (``--rebuild``: replaces) this engine of ``manifest``'s
    model."""
    args = ["provq-export", "engine", str(manifest.directory), "--part", part, "--precision", precision]
    if images is not None:
        args += ["--min-shape", format_shape(images.min), "--opt-shape", format_shape(images.opt)]
        args += ["--max-shape", format_shape(images.max)]
        if images.max[0] == 1 and dla_core is None:
            args += ["--max-batch", "1"]  # shapes of batch 1 alone would get the default batch range
    if dla_core is not None:
        args += ["--dla", str(dla_core)]
    if rebuild:
        args.append("--rebuild")
    return shlex.join(args)


def check_sidecar(engine_path: Path, manifest: Manifest, device_info: DeviceInfo, trt_version: str) -> EngineMeta:
    """Refuse an engine that was not built for this device, TensorRT, L4T, model ONNX and codebook.

    Returns the sidecar when everything matches; otherwise raises one EdgeError line that names every difference
    (``other device``, ``other TensorRT version``, ``other L4T``, ``other ONNX``, ``other codebook``, ``missing
    sidecar``) and ends with the exact ``provq-export engine ... --rebuild`` command.
    """
    engine_path = Path(engine_path)
    parsed = parse_engine_file_name(engine_path.name) or {}
    exists = engine_path.is_file()
    if not exists or not sidecar_path(engine_path).is_file():
        part, precision = parsed.get("part", "encoder"), parsed.get("precision", "fp32")
        images, dla_core = parsed.get("images"), parsed.get("dla_core")
        cmd = rebuild_command(manifest, part, precision, images, dla_core=dla_core, rebuild=exists)
        if not exists:
            raise EdgeError(f"engine {engine_path} does not exist: build it with: {cmd}")
        raise EdgeError(
            f"engine {engine_path.name} has no {sidecar_path(engine_path).name} beside it (missing sidecar: nothing "
            f"says what it was built for): rebuild it with: {cmd}"
        )
    meta = read_sidecar(engine_path)
    images = ShapeProfile(
        image_shape(manifest, meta.part, tuple(meta.profile["min"])),
        image_shape(manifest, meta.part, tuple(meta.profile["opt"])),
        image_shape(manifest, meta.part, tuple(meta.profile["max"])),
    )
    cmd = rebuild_command(manifest, meta.part, meta.precision, images, dla_core=meta.dla_core)

    diffs = []
    here = f"{device_info.name} sm{device_info.cc.replace('.', '')}"
    built = f"{meta.device_name} sm{meta.compute_capability.replace('.', '')}"
    if (meta.device_name, meta.compute_capability) != (device_info.name, device_info.cc):
        diffs.append(f"other device (built on {built}, this is {here})")
    if meta.tensorrt_version != str(trt_version):
        diffs.append(f"other TensorRT version (built with {meta.tensorrt_version}, this is {trt_version})")
    if meta.l4t != device_info.l4t:
        diffs.append(f"other L4T (built on {meta.l4t or 'no L4T'}, this is {device_info.l4t or 'no L4T'})")
    if meta.codebook_sha256 != manifest.codebook_sha256:
        diffs.append(
            f"other codebook (built for {meta.codebook_sha256[:8]}, the model has {manifest.codebook_sha256[:8]})"
        )
    try:
        expected_file, _ = onnx_source(manifest, meta.part, meta.precision, str(trt_version))
    except EdgeError as err:
        diffs.append(f"other ONNX ({err})")
    else:
        expected_sha = str(manifest.data["sha256"].get(expected_file, ""))
        if (meta.onnx_file, meta.onnx_sha256) != (expected_file, expected_sha):
            diffs.append(
                f"other ONNX (built from {meta.onnx_file} {meta.onnx_sha256[:8]}, the model has {expected_file} "
                f"{expected_sha[:8] or 'unlisted'})"
            )
    if diffs:
        raise EdgeError(f"engine {engine_path.name} is stale: {'; '.join(diffs)}; rebuild it with: {cmd}")
    return meta
