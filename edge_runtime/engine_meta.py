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
from types import ModuleType
from typing import Any, Protocol

from .errors import EdgeError
from .formats.versions import package_version
from .manifest import PARTS, PRECISIONS, Manifest, write_json_atomic

FORMAT = "provq-engine"
VERSION = 1
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
TRT_MISSING = (
    "tensorrt is not installed: on a Jetson use JetPack's python3-libnvinfer (create the venv with "
    "--system-site-packages)"
)

Shape = tuple[int, ...]


# -- shapes ------------------------------------------------------------------------------------------------------


def parse_shape(text: str) -> Shape:
    """``"1x3x256x256"`` -> (1, 3, 256, 256); EdgeError on anything else."""
    parts = str(text).lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EdgeError(f"shape {text!r} is not like 1x3x256x256 (positive integers joined by 'x')")
    return tuple(int(p) for p in parts)


def format_shape(shape: Shape) -> str:
    """(1, 3, 256, 256) -> ``"1x3x256x256"``."""
    return "x".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class ShapeProfile:
    """An optimization profile for one input: min <= opt <= max, dimension by dimension."""

    min: Shape
    opt: Shape
    max: Shape

    @property
    def is_static(self) -> bool:
        """True when min == opt == max (what DLA needs)."""
        return self.min == self.opt == self.max

    def contains(self, shape: Shape) -> bool:
        """True when ``shape`` has the profile's rank and lies between min and max in every dimension."""
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )

    def __str__(self) -> str:
        if self.is_static:
            return format_shape(self.opt)
        return f"{format_shape(self.min)}..{format_shape(self.max)} (opt {format_shape(self.opt)})"


def image_profile(manifest: Manifest, min_shape: Shape, opt_shape: Shape, max_shape: Shape) -> ShapeProfile:
    """Check an image-side profile (N x 3 x H x W, H and W multiples of the downsample factor, min <= opt <= max)."""
    ds = manifest.downsample
    for label, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
            raise EdgeError(f"--{label}-shape {format_shape(shape)} is not N x 3 x H x W (e.g. 1x3x256x256)")
        if shape[2] % ds or shape[3] % ds:
            raise EdgeError(
                f"--{label}-shape {format_shape(shape)}: H and W must be multiples of the model's downsample {ds}"
            )
    ordered = zip(min_shape, opt_shape, max_shape, strict=True)
    if not all(lo <= mid <= hi for lo, mid, hi in ordered):
        raise EdgeError(
            f"shape profile out of order: need min {format_shape(min_shape)} <= opt {format_shape(opt_shape)} <= "
            f"max {format_shape(max_shape)} in every dimension"
        )
    return ShapeProfile(tuple(min_shape), tuple(opt_shape), tuple(max_shape))


def input_profile(manifest: Manifest, part: str, images: ShapeProfile) -> ShapeProfile:
    """The engine input's profile for an image-side one: the encoder takes the images (N x 3 x H x W float32), the
    decoder the token grid (N x H/ds x W/ds int32)."""
    if part == "encoder":
        return images
    ds = manifest.downsample

    def ids(shape: Shape) -> Shape:
        return (shape[0], shape[2] // ds, shape[3] // ds)

    return ShapeProfile(ids(images.min), ids(images.opt), ids(images.max))


def image_shape(manifest: Manifest, part: str, shape: Shape) -> Shape:
    """The image shape N x 3 x H x W that an engine input shape of ``part`` corresponds to (inverse of the above)."""
    if part == "encoder":
        return tuple(shape)
    ds = manifest.downsample
    return (shape[0], 3, shape[1] * ds, shape[2] * ds)


def _dim(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def shape_tag(images: ShapeProfile) -> str:
    """The file-name form of an image-side profile: ``b1-4x256x256``, ``b1x256-512x256-512o1x384x384``."""
    lo, hi, opt = images.min, images.max, images.opt
    tag = f"b{_dim(lo[0], hi[0])}x{_dim(lo[2], hi[2])}x{_dim(lo[3], hi[3])}"
    if opt != hi:
        tag += f"o{opt[0]}x{opt[2]}x{opt[3]}"
    return tag


_TAG = re.compile(r"^b(\d+)(?:-(\d+))?x(\d+)(?:-(\d+))?x(\d+)(?:-(\d+))?(?:o(\d+)x(\d+)x(\d+))?$")


def parse_shape_tag(tag: str) -> ShapeProfile | None:
    """Inverse of ``shape_tag``; None when ``tag`` is not one."""
    m = _TAG.match(tag)
    if m is None:
        return None
    g = [None if v is None else int(v) for v in m.groups()]
    lo = (g[0], 3, g[2], g[4])
    hi = (g[1] or g[0], 3, g[3] or g[2], g[5] or g[4])
    opt = (g[6], 3, g[7], g[8]) if g[6] is not None else hi
    return ShapeProfile(lo, opt, hi)  # type: ignore[arg-type]


# -- the device ----------------------------------------------------------------------------------------------------


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
    model_dir: Path | str,
    part: str,
    precision: str,
    images: ShapeProfile | None = None,
    *,
    dla_core: int | None = None,
    rebuild: bool = True,
) -> str:
    """The ``provq-export engine`` command line that builds (``--rebuild``: replaces) this engine."""
    args = ["provq-export", "engine", str(model_dir), "--part", part, "--precision", precision]
    if images is not None:
        args += ["--min-shape", format_shape(images.min), "--opt-shape", format_shape(images.opt)]
        args += ["--max-shape", format_shape(images.max)]
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
    if not engine_path.is_file():
        cmd = rebuild_command(manifest.directory, parsed.get("part", "encoder"), parsed.get("precision", "fp32"),
                              parsed.get("images"), dla_core=parsed.get("dla_core"), rebuild=False)  # fmt: skip
        raise EdgeError(f"engine {engine_path} does not exist: build it with: {cmd}")
    if not sidecar_path(engine_path).is_file():
        cmd = rebuild_command(manifest.directory, parsed.get("part", "encoder"), parsed.get("precision", "fp32"),
                              parsed.get("images"), dla_core=parsed.get("dla_core"))  # fmt: skip
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
    cmd = rebuild_command(manifest.directory, meta.part, meta.precision, images, dla_core=meta.dla_core)

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
