"""MODEL_DIR + representative frames -> encoder.int8.onnx, decoder.int8.onnx, calibration.json (and the manifest).

Results are cached in MODEL_DIR/calibration-cache/<key>/, the key being a hash of (model fingerprint, data
fingerprint, method, frame count and the settings that change the output); a matching entry is reused (and the
reuse logged) unless ``recalibrate``. New files are written to temporary names and moved into place, the manifest
last, so an interrupted run leaves the previous model directory working.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from provq.edge_runtime import manifest as mf
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.formats.files import atomic_path, sha256_file, staged_directory
from provq.edge_runtime.formats.graph import QUANTIZER_SCOPE
from provq.edge_runtime.formats.int8_rules import ALWAYS_FP32, keep_fp32
from provq.edge_runtime.formats.manifest import write_manifest
from provq.export.fp16_graph import rounding_emulation

from . import frames as frame_selection
from .quantize import METHODS, GraphCalibration, quantize_graph
from .report import compare, session

log = logging.getLogger("provq.calibrate")

CACHE = "calibration-cache"
REPORT = "calibration.json"
ENGINES = ("ort", "modelopt")


@dataclass
class CalibrationConfig:
    """One calibration run; the fields below ``frames`` are part of the cache key."""

    data: list[str]  # runtime source URIs: video files, image folders, globs, cameras...
    frames: int = 300  # calibration frames (error below 64, warning below 300)
    method: str = "entropy"  # entropy, minmax or percentile
    engine: str = "ort"  # ort (onnxruntime.quantization) or modelopt (nvidia-modelopt, optional)
    size: tuple[int, int] = (256, 256)  # frames are resized to cover W x H and centre-cropped
    evaluation_frames: int = 32  # held-out frames the report measures on
    keep_fp32: dict[str, dict[str, str]] | None = None  # {part: {Conv name: why}}; None = default_keep_fp32()


def conv_names(path: Path) -> list[str]:
    """Names of the Conv nodes of an ONNX file, in graph order."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "Conv"]


def _convs(manifest: mf.Manifest, part: str) -> list[str]:
    return conv_names(manifest.path("fp32", part))


def default_keep_fp32(manifest: mf.Manifest) -> dict[str, dict[str, str]]:
    """The Convs that stay FP32 in this model's graphs, and why (``formats.int8_rules.keep_fp32``)."""
    stem = manifest.data.get("model_config", {}).get("stem")
    return keep_fp32(_convs(manifest, "encoder"), _convs(manifest, "decoder"), stem)


def _check(cfg: CalibrationConfig) -> None:
    if cfg.method not in METHODS:
        raise EdgeError(f"unknown --method {cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.engine not in ENGINES:
        raise EdgeError(f"unknown --engine {cfg.engine!r}: use one of {', '.join(ENGINES)}")
    if cfg.frames < frame_selection.MIN_FRAMES:
        raise EdgeError(
            f"--frames {cfg.frames} is too few to calibrate INT8 ranges: use at least {frame_selection.MIN_FRAMES} "
            f"(300 or more recommended)"
        )
    if cfg.frames < frame_selection.WARN_FRAMES:
        log.warning("--frames %d is below the recommended %d: ranges may miss rare content", cfg.frames, 300)
    if cfg.evaluation_frames < 1:
        raise EdgeError("--eval-frames must be at least 1")


def _cache_key(manifest: mf.Manifest, fingerprint: str, cfg: CalibrationConfig) -> str:
    model = [manifest.data["sha256"][manifest.path("fp32", part).name] for part in mf.PARTS]
    settings = {"model": model, "data": fingerprint, "method": cfg.method, "frames": cfg.frames,
                "engine": cfg.engine, "size": list(cfg.size), "evaluation_frames": cfg.evaluation_frames,
                "keep_fp32": cfg.keep_fp32, "format": 4}  # fmt: skip
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def _quantize(engine: str, job: GraphCalibration) -> None:
    if engine == "modelopt":
        from .modelopt_engine import quantize_graph_modelopt

        quantize_graph_modelopt(job)
    else:
        quantize_graph(job)


def _run(manifest: mf.Manifest, sets: frame_selection.FrameSets, cfg: CalibrationConfig, out: Path) -> dict:
    started = time.perf_counter()
    enc32, dec32 = manifest.path("fp32", "encoder"), manifest.path("fp32", "decoder")
    enc_in, _ = manifest.tensor_names("encoder")
    dec_in, _ = manifest.tensor_names("decoder")
    enc8, dec8 = out / "encoder.int8.onnx", out / "decoder.int8.onnx"
    cpu = {part: out / f"{part}.{mf.CPU_INT8}.onnx" for part in mf.PARTS} if cfg.engine == "ort" else {}
    graphs = {"encoder": (enc32, enc8, enc_in), "decoder": (dec32, dec8, dec_in)}

    def job(part: str, inputs: list[np.ndarray]) -> GraphCalibration:
        return GraphCalibration(*graphs[part], inputs, cfg.method, list(cfg.keep_fp32[part]), cpu.get(part))

    log.info("calibrating the encoder on %d frames (%s)", len(sets.calibration), cfg.method)
    _quantize(cfg.engine, job("encoder", sets.calibration))
    encoder = session(enc32)
    ids = [encoder.run(None, {enc_in: x})[0] for x in sets.calibration]
    log.info("calibrating the decoder on the FP32 ids of the same frames")
    _quantize(cfg.engine, job("decoder", ids))
    log.info("measuring INT8 against FP32 on %d held-out frames", len(sets.evaluation))
    figures = compare((enc32, dec32), (enc8, dec8), sets.evaluation, (enc_in, dec_in), exact=True)
    cpu_figures = (
        compare((enc32, dec32), (cpu["encoder"], cpu["decoder"]), sets.evaluation, (enc_in, dec_in)) if cpu else None
    )
    split = None
    if manifest.has("fp16"):  # the split that keeps the ids: FP16 encoder (its rounding emulated) + INT8 decoder
        log.info("measuring an FP16 encoder with the INT8 decoder on the same frames")
        enc16 = manifest.path("fp16", "encoder")
        manifest.verify(enc16)
        split = compare(
            (enc32, dec32), (rounding_emulation(enc16), dec8), sets.evaluation, (enc_in, dec_in), exact=True
        )
    kept = [{"node": f"{QUANTIZER_SCOPE}*", "precision": "fp32", "why": ALWAYS_FP32}]
    for part, nodes in cfg.keep_fp32.items():
        kept += [{"part": part, "node": name, "precision": "fp32", "why": why} for name, why in nodes.items()]
    return {
        "format": "provq-calibration",
        "version": 1,
        "data": cfg.data,
        "data_fingerprint": sets.fingerprint,
        "candidate_frames": sets.candidates,
        "method": cfg.method,
        "engine": cfg.engine,
        "frames": len(sets.calibration),
        "size": list(cfg.size),
        "quantized": "Conv inputs: per-tensor symmetric int8; Conv weights: per-channel symmetric int8",
        "kept_higher_precision": kept,
        "int8": figures,
        "int8_cpu": cpu_figures,
        "fp16_encoder_int8_decoder": split,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _install(manifest: mf.Manifest, entry: Path, report: dict) -> None:
    """Copy the cached files into the model directory (atomic per file) and update the manifest last."""
    directory = manifest.directory
    sets = {"int8": {part: f"{part}.int8.onnx" for part in mf.PARTS}}
    if (entry / f"encoder.{mf.CPU_INT8}.onnx").is_file():
        sets[mf.CPU_INT8] = {part: f"{part}.{mf.CPU_INT8}.onnx" for part in mf.PARTS}
    for name in [*(n for files in sets.values() for n in files.values()), REPORT]:
        with atomic_path(directory / name) as tmp:
            shutil.copyfile(entry / name, tmp)
    fields = manifest.fields
    files = {k: v for k, v in fields.files.items() if k != mf.CPU_INT8}  # a modelopt run has no CPU files
    written = [n for files in sets.values() for n in files.values()]
    int8 = {key: report[key] for key in ("method", "engine", "frames", "data", "data_fingerprint", "size")} | {
        "token_agreement": report["int8"]["token_agreement"],
        "psnr_drop_db": report["int8"]["psnr_drop_db"],
    }
    if report.get("fp16_encoder_int8_decoder"):
        split = report["fp16_encoder_int8_decoder"]
        int8["fp16_encoder"] = {key: split[key] for key in ("token_agreement", "psnr_drop_db")}
    updated = replace(
        fields,
        files={**files, **sets},
        sha256={**fields.sha256, **{n: sha256_file(directory / n) for n in written}},
        int8=int8,
    )
    write_manifest(directory, updated)


def calibrate(model_dir: str | Path, cfg: CalibrationConfig, *, recalibrate: bool = False) -> dict:
    """Calibrate (or reuse a cached calibration) and install the INT8 files; returns the calibration report."""
    _check(cfg)
    manifest = mf.load_manifest(model_dir)
    if manifest.model_of_record != "fp32":
        raise EdgeError(
            f"{manifest.directory} is a quantization-aware model: its INT8 scales were trained with it (provq-train "
            "--qat) and its int8 files come from provq-export; calibrating would replace its model of record"
        )
    for part in mf.PARTS:
        manifest.verify(manifest.path("fp32", part))
    if cfg.keep_fp32 is None:
        cfg = replace(cfg, keep_fp32=default_keep_fp32(manifest))
    sets = frame_selection.select_frames(
        cfg.data, cfg.frames, downsample=manifest.downsample, size=cfg.size, evaluation=cfg.evaluation_frames
    )
    key = _cache_key(manifest, sets.fingerprint, cfg)
    entry = manifest.directory / CACHE / key
    if (entry / REPORT).is_file() and not recalibrate:
        log.info("reusing calibration %s from %s (pass --recalibrate to run it again)", key, entry)
        report = json.loads((entry / REPORT).read_text())
    else:
        with staged_directory(entry) as staging:
            report = _run(manifest, sets, cfg, staging) | {"cache_key": key}
            (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    _install(manifest, entry, report)
    return report
