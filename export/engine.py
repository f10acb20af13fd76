"""Build TensorRT engines from a model directory's ONNX files, on the device that will run them. No torch.

    build_engine("model", "encoder", "int8", opt_shape=(1, 3, 256, 256), max_batch=4)
    -> model/engines/3f9a01c2.encoder.int8.b1-4x256x256.orin-sm87.trt10.3.0.engine (+ .engine.json sidecar)

Shapes are image shapes N x 3 x H x W for both parts (H, W multiples of the model's downsample factor); the
decoder's profile is derived from them (N x H/ds x W/ds token ids). Unset shapes default to the set ones, so one
shape gives a static H x W; none gives 256 x 256.

The batch dimension N (frames per call: provq-run --input batches one frame per camera, cameras.py) is 1 ..
``max_batch`` in the profile, tuned for ``max_batch`` (opt = max), with ``max_batch`` defaulting to
DEFAULT_MAX_BATCH. Shapes that already carry a batch (an N other than 1) keep theirs unless ``max_batch`` is given,
and DLA engines, which need static shapes, take N = ``max_batch`` (default: the shapes' N) in min, opt and max.

Precision, per TensorRT version (``network_flags`` / ``onnx_source``):

=========  ==========================================  ==============================================
precision  TensorRT 10.x (JetPack 6: 10.3)             TensorRT 11.x (always strongly typed)
=========  ==========================================  ==============================================
int8       ``*.int8.onnx`` (explicit Q/DQ), STRONGLY_   same file, no flags; never ``BuilderFlag.INT8``
           TYPED network; never ``BuilderFlag.INT8``   (removed in 11)
fp32       ``*.onnx``, STRONGLY_TYPED network          same file, no flags
fp16       ``*.fp16.onnx`` (``files.fp16``, written by  only ``*.fp16.onnx``; a model exported before
           provq-export), STRONGLY_TYPED network; a    provq wrote it gets a one-line error saying to
           model without it: ``*.onnx`` on a weakly    export it again: the FP16 builder flag was
           typed network + ``BuilderFlag.FP16``        removed in 11.0
=========  ==========================================  ==============================================

The STRONGLY_TYPED bit is computed from ``trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (its value differs
between 10.x and 11.x) and is never set on 11.x, where the flag is deprecated and ignored.

DLA (``dla_core``): ``default_device_type = DLA``, ``DLA_core``, ``GPU_FALLBACK``; static shapes only, fp16 or int8
only, and only where ``builder.num_DLA_cores`` says the device has one (AGX Orin and Orin NX; not Orin Nano or Thor).

Caching: an engine whose file name (the cache key, ``engine_meta.engine_file_name``) exists and whose sidecar
matches this device, TensorRT, L4T and ONNX is reused ("reusing ..."); one whose sidecar does not is refused with the
rebuild command unless ``rebuild=True``. A timing cache per device and TensorRT version lives beside the engines
(``timing.<device>.trt<version>.cache``), loaded before and saved after every build, so later builds are faster.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from provq.edge_runtime.cuda_shim import CudaRuntime
from provq.edge_runtime.engine_device import DeviceInfo, import_tensorrt, probe_device, trt_major, trt_short
from provq.edge_runtime.engine_meta import (
    check_sidecar,
    engine_file_name,
    make_meta,
    onnx_source,
    sidecar_path,
    write_sidecar,
)
from provq.edge_runtime.engine_shapes import ShapeProfile, format_shape, image_profile, input_profile, shape_tag
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import PARTS, PRECISIONS, Manifest, load_manifest, write_bytes_atomic

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (1, 3, 256, 256)
DEFAULT_MAX_BATCH = 4  # frames per call an engine takes unless told: four cameras on one model
DEFAULT_WORKSPACE_MB = 1024
ASSUMED_TRT = "10.3.0"  # for the trtexec line printed when tensorrt is missing: JetPack 6's TensorRT

Shape = tuple[int, ...]


@dataclass(frozen=True)
class EngineRequest:
    """What to build, checked against the model before TensorRT is touched."""

    manifest: Manifest
    part: str  # "encoder" | "decoder"
    precision: str  # "int8" | "fp16" | "fp32"
    images: ShapeProfile  # image-side profile, N x 3 x H x W
    workspace_mb: int  # TensorRT workspace memory pool limit
    dla_core: int | None  # DLA core, or None for the GPU
    out_dir: Path  # where engines, sidecars and the timing cache go

    @property
    def input_name(self) -> str:
        return self.manifest.tensor_names(self.part)[0]

    @property
    def profile(self) -> ShapeProfile:
        """The engine input's own profile (images for the encoder, token grids for the decoder)."""
        return input_profile(self.manifest, self.part, self.images)


@dataclass(frozen=True)
class BuildPlan:
    """A request resolved for one TensorRT version (and device): which ONNX, which flags, which files."""

    request: EngineRequest
    trt_version: str
    onnx_path: Path
    fp16_flag: bool  # 10.x fp16 from the FP32 ONNX: weakly typed network + BuilderFlag.FP16
    strongly_typed: bool  # what the network is (11.x: always)
    engine_path: Path
    timing_cache_path: Path


def make_request(
    model_dir: Path | str,
    part: str,
    precision: str,
    *,
    min_shape: Shape | None = None,
    opt_shape: Shape | None = None,
    max_shape: Shape | None = None,
    max_batch: int | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    dla_core: int | None = None,
    out_dir: Path | str | None = None,
) -> EngineRequest:
    """Load the manifest and check the arguments (one-line EdgeError on anything wrong); ``max_batch`` as in the
    module docstring."""
    manifest = load_manifest(model_dir)
    if part not in PARTS:
        raise EdgeError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    if precision not in PRECISIONS:
        raise EdgeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if int(workspace_mb) < 1:
        raise EdgeError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
    if max_batch is not None and int(max_batch) < 1:
        raise EdgeError(f"--max-batch must be at least 1 frame, got {max_batch}")
    opt = opt_shape or max_shape or min_shape or DEFAULT_SHAPE
    shapes = [tuple(min_shape or opt), tuple(opt), tuple(max_shape or opt)]
    shapes = _with_batch(shapes, max_batch, dla_core is not None)
    images = image_profile(manifest, *shapes)
    if dla_core is not None:
        if int(dla_core) < 0:
            raise EdgeError(f"--dla must be a DLA core number (0 or 1), got {dla_core}")
        if not images.is_static:
            raise EdgeError(
                f"DLA needs static shapes but the profile is dynamic ({images}): pass one --opt-shape (or equal "
                "--min-shape, --opt-shape and --max-shape) with --dla"
            )
        if precision == "fp32":
            raise EdgeError("DLA runs fp16 or int8 only: pass --precision int8 or fp16 with --dla")
    out = Path(out_dir) if out_dir is not None else manifest.directory / "engines"
    dla = None if dla_core is None else int(dla_core)
    return EngineRequest(manifest, part, precision, images, int(workspace_mb), dla, out)


def _with_batch(shapes: list[Shape], max_batch: int | None, dla: bool) -> list[Shape]:
    """min, opt, max shapes with the batch dimension the module docstring describes."""
    if max_batch is None and (dla or any(s[0] != 1 for s in shapes)):
        return shapes
    batch = int(max_batch or DEFAULT_MAX_BATCH)
    low = batch if dla else 1
    return [(n, *s[1:]) for n, s in zip((low, batch, batch), shapes, strict=True)]


def plan_build(request: EngineRequest, trt_version: str, device: DeviceInfo | None) -> BuildPlan:
    """Pick the ONNX file and network typing for ``trt_version`` and name the files (``device`` None: generic
    names, used only for the trtexec line printed when TensorRT is missing)."""
    m = request.manifest
    _, fp16_flag = onnx_source(m, request.part, request.precision, trt_version)
    onnx_path = m.path("fp32" if fp16_flag else request.precision, request.part)
    strongly_typed = trt_major(trt_version) >= 11 or not fp16_flag
    if device is None:
        name = f"{request.part}.{request.precision}.{shape_tag(request.images)}.engine"
        cache = "timing.cache"
    else:
        name = engine_file_name(
            m, request.part, request.precision, request.images, device=device, trt_version=trt_version,
            dla_core=request.dla_core,
        )  # fmt: skip
        cache = f"timing.{device.tag}.trt{trt_short(trt_version)}.cache"
    return BuildPlan(request, str(trt_version), onnx_path, fp16_flag, strongly_typed, request.out_dir / name,
                     request.out_dir / cache)  # fmt: skip


def network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    """``create_network`` flags: the STRONGLY_TYPED bit on 10.x when asked; 0 on 11.x (always strongly typed)."""
    if trt_major(trt.__version__) >= 11 or not strongly_typed:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def trtexec_command(plan: BuildPlan) -> str:
    """The ``trtexec`` command line that builds the same engine (without the provq sidecar)."""
    r = plan.request
    name, profile = r.input_name, r.profile
    args = [
        "trtexec",
        f"--onnx={plan.onnx_path}",
        f"--saveEngine={plan.engine_path}",
        f"--minShapes={name}:{format_shape(profile.min)}",
        f"--optShapes={name}:{format_shape(profile.opt)}",
        f"--maxShapes={name}:{format_shape(profile.max)}",
        f"--memPoolSize=workspace:{r.workspace_mb}M",
        f"--timingCacheFile={plan.timing_cache_path}",
    ]
    if trt_major(plan.trt_version) == 10:
        args.append("--fp16" if plan.fp16_flag else "--stronglyTyped")
    if r.dla_core is not None:
        args += [f"--useDLACore={r.dla_core}", "--allowGPUFallback"]
    return shlex.join(args)


def parser_error_line(parser: Any, onnx_path: Path) -> str:
    """TensorRT's ONNX parser errors as one line: the first error's description and node, and how many more."""
    count = int(getattr(parser, "num_errors", 0))
    if count == 0:
        return f"TensorRT's ONNX parser rejected {onnx_path} without saying why: check it with polygraphy or trtexec"
    first = parser.get_error(0)

    def field(name: str) -> str:
        value = getattr(first, name, None)
        try:
            return str(value() if callable(value) else value or "")
        except Exception:  # an accessor missing in this TensorRT version: leave it out
            return ""

    desc = field("desc") or str(first)
    node, op = field("node_name"), field("node_operator")
    where = f" at node {node}" + (f" ({op})" if op else "") if node else ""
    more = f" (+{count - 1} more)" if count > 1 else ""
    return " ".join(f"TensorRT's ONNX parser rejected {onnx_path.name}{where}: {desc}{more}".split())


def _network_input(network: Any, plan: BuildPlan) -> None:
    """Check that the parsed network has the manifest's input with a shape the profile fits."""
    r = plan.request
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    if names != [r.input_name]:
        raise EdgeError(
            f"{plan.onnx_path.name} has inputs {names}, the manifest says {r.input_name!r}: re-export the model"
        )
    dims = tuple(int(d) for d in inputs[0].shape)
    profile = r.profile
    fits = len(dims) == len(profile.min) and all(
        d < 0 or lo == hi == d for d, lo, hi in zip(dims, profile.min, profile.max, strict=True)
    )
    if not fits:
        raise EdgeError(
            f"the shape profile {profile} does not fit {plan.onnx_path.name}'s input {r.input_name} {list(dims)} "
            "(-1 = dynamic): change --min-shape/--opt-shape/--max-shape"
        )


def _run_builder(trt: ModuleType, plan: BuildPlan) -> bytes | Any:
    """Run the TensorRT builder for ``plan``; returns the serialized engine and saves the timing cache."""
    r = plan.request
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        raise EdgeError(parser_error_line(parser, plan.onnx_path))
    _network_input(network, plan)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, r.workspace_mb << 20)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions in the engine inspector
    profile = builder.create_optimization_profile()
    p = r.profile
    profile.set_shape(r.input_name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    if plan.fp16_flag:  # 10.x only (plan_build never sets it on 11.x, where BuilderFlag.FP16 no longer exists)
        config.set_flag(trt.BuilderFlag.FP16)
    if r.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if r.dla_core >= cores:
            raise EdgeError(
                f"--dla {r.dla_core}: this device has {cores} DLA core(s) for TensorRT {trt.__version__} "
                "(Orin Nano and Thor have none): drop --dla or pick a core below that"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = r.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    cache_bytes = plan.timing_cache_path.read_bytes() if plan.timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not fit this TensorRT/device; starting a new one", plan.timing_cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif cache_bytes:
        log.info("using timing cache %s", plan.timing_cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeError(
            f"TensorRT could not build the {r.part} {r.precision} engine from {plan.onnx_path.name} (see its log "
            "above): try a larger --workspace, or check the ONNX with polygraphy"
        )
    write_bytes_atomic(plan.timing_cache_path, config.get_timing_cache().serialize())
    return serialized


def build_engine(model_dir: Path | str, part: str, precision: str, *, rebuild: bool = False, **options: Any) -> Path:
    """``build_request(make_request(model_dir, part, precision, **options))``; ``options`` are make_request's
    keywords (the shapes, ``max_batch``, ``workspace_mb``, ``dla_core``, ``out_dir``), so a bad request is refused
    (one-line EdgeError) before TensorRT is imported."""
    return build_request(make_request(model_dir, part, precision, **options), rebuild=rebuild)


def build_request(request: EngineRequest, *, rebuild: bool = False) -> Path:
    """Build (or reuse) the TensorRT engine of one model part; returns the engine path (sidecar beside it).

    Raises EdgeError (one line) for a missing tensorrt or cuda-python, a stale engine without ``rebuild``, an ONNX
    file TensorRT rejects, or a failed build.
    """
    preview = trtexec_command(plan_build(request, ASSUMED_TRT, None))
    trt = import_tensorrt(f"; the equivalent trtexec command is: {preview}")
    device = probe_device(CudaRuntime.load())
    plan = plan_build(request, trt.__version__, device)
    engine_path = plan.engine_path
    log.info("trtexec equivalent: %s", trtexec_command(plan))

    if engine_path.exists() and not rebuild:
        meta = check_sidecar(engine_path, request.manifest, device, trt.__version__)
        log.info("reusing %s (built %s)", engine_path, meta.created)
        return engine_path

    request.manifest.verify(plan.onnx_path)
    log.info(
        "building %s %s engine for %s with TensorRT %s (profile %s); this takes minutes on a Jetson",
        request.part, request.precision, device, trt.__version__, request.profile,
    )  # fmt: skip
    request.out_dir.mkdir(parents=True, exist_ok=True)
    serialized = _run_builder(trt, plan)
    sidecar_path(engine_path).unlink(missing_ok=True)  # a crash below leaves no sidecar, so no stale match
    write_bytes_atomic(engine_path, serialized)
    meta = make_meta(
        request.manifest, part=request.part, precision=request.precision, input_name=request.input_name,
        profile=request.profile, device=device, trt_version=trt.__version__, dla_core=request.dla_core,
        onnx_file=plan.onnx_path.name, onnx_sha256=request.manifest.data["sha256"][plan.onnx_path.name],
        strongly_typed=plan.strongly_typed,
    )  # fmt: skip
    write_sidecar(engine_path, meta)
    log.info("wrote %s and its sidecar", engine_path)
    return engine_path
