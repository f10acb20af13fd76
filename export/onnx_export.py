"""Checkpoint -> model directory: encoder.onnx, decoder.onnx, their FP16 versions and manifest.json, all checked.

    provq-export default --out models/tiny

Both graphs take dynamic batch and spatial sizes (multiples of the downsample factor), use opset 17 (TensorRT 10.3,
JetPack 6's version, parses opsets 9-20) and int32 ids. The parity check runs the ONNX files in ONNX Runtime on real
frames (the shipped sample photos, prepared by the runtime's own preprocessing) and compares ids and reconstructions
with PyTorch; its figures go into the manifest, and an export that disagrees is refused. The FP16 files
(``encoder.fp16.onnx``, ``decoder.fp16.onnx``: FP16 body, FP32 nearest-code search, see fp16_graph.py) are checked
the same way against the FP32 ONNX files, and their figures go into ``parity.fp16``.

The directory is written next to its destination and moved into place only when complete, so an interrupted or
failed export leaves the previous directory untouched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from provq.edge_runtime import manifest as mf
from provq.edge_runtime.backends import cpu_session
from provq.edge_runtime.formats.errors import ProvqError
from provq.edge_runtime.formats.files import sha256_file, staged_directory
from provq.edge_runtime.formats.graph import IDS, IMAGES
from provq.edge_runtime.formats.manifest import ModelManifest, write_codebook, write_manifest
from provq.edge_runtime.formats.manifest import codebook_sha256 as fingerprint
from provq.edge_runtime.formats.media import IMAGE_EXTENSIONS
from provq.edge_runtime.formats.versions import package_versions
from provq.edge_runtime.preprocess import prepare, resize_to
from provq.edge_runtime.quality import psnr_from_mse
from provq.train import checkpoint, qat
from provq.train.data import read_image, sample_dir
from provq.train.model import Tokenizer

from .fp16_graph import convert_to_fp16, rounding_emulation
from .graphs import DecoderGraph, EncoderGraph
from .macs import count_macs
from .qat_export import check_int8, write_int8

OPSET = 17
MIN_TOKEN_PARITY = 0.999  # ONNX Runtime FP32 ids equal to PyTorch's on at least this share of positions
MIN_FP16_TOKEN_PARITY = 0.9  # FP16 ids equal to FP32's on fewer positions than this: the conversion is broken
PARITY_SIZE = 256  # parity frames are resized to fit this many pixels on their longer side
MACS_SIZE = (256, 256)  # frame size the manifest's compute figures are counted at (per megapixel they are size-free)


def codebook_sha256(codebook: torch.Tensor) -> str:
    """The fingerprint (``formats.manifest.codebook_sha256``) of a K x D codebook tensor."""
    return fingerprint(codebook.detach().cpu().float().numpy())


EXPORTED_WITH = ("provq", "torch", "onnx", "onnxruntime", "numpy", "opencv-python-headless")


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str], axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; its output is what we want
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            opset_version=OPSET,
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,
        )


def export_graphs(model: Tokenizer, directory: Path) -> tuple[Path, Path]:
    """DIRECTORY/encoder.onnx and decoder.onnx (FP32, dynamic batch and size) of ``model``, unchecked."""
    ds = model.downsample
    encoder_path, decoder_path = directory / "encoder.onnx", directory / "decoder.onnx"
    spatial = {0: "batch", 2: "height", 3: "width"}
    grid = {0: "batch", 1: "rows", 2: "columns"}
    images = torch.zeros(1, 3, 4 * ds, 6 * ds)
    _export(EncoderGraph(model).eval(), images, encoder_path, (IMAGES, IDS), {IMAGES: spatial, IDS: grid})
    ids = torch.zeros(1, 4, 6, dtype=torch.int32)
    _export(DecoderGraph(model).eval(), ids, decoder_path, (IDS, IMAGES), {IDS: grid, IMAGES: spatial})
    return encoder_path, decoder_path


def parity_frames(downsample: int, limit: int = 6) -> list[np.ndarray]:
    """Real frames for the parity check: sample photos at most PARITY_SIZE on the longer side, as 1 x 3 x H x W."""
    images = sorted(p for p in (sample_dir() / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    frames = []
    for path in images[:limit]:
        rgb = read_image(path)
        if rgb is None:
            continue
        scale = PARITY_SIZE / max(rgb.shape[:2])
        if scale < 1:
            rgb = resize_to(rgb, round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        frames.append(prepare(np.ascontiguousarray(rgb[..., ::-1]), downsample)[0])
    return frames


def _parity_batches(downsample: int) -> list[np.ndarray]:
    frames = parity_frames(downsample)
    frames.append(np.concatenate([frames[0], frames[0][:, :, ::-1].copy()]))  # a batch of 2
    return frames


def check_parity(model: Tokenizer, encoder_path: Path, decoder_path: Path) -> dict[str, Any]:
    """Run both ONNX files in ONNX Runtime (CPU) against PyTorch on real frames; figures for the manifest."""
    encoder, decoder = cpu_session(encoder_path), cpu_session(decoder_path)
    same = total = 0
    max_diff = 0.0
    sizes = []
    frames = _parity_batches(model.downsample)
    with torch.no_grad():
        for x in frames:
            ids_torch = model.encode(torch.from_numpy(x)).numpy()
            ids_onnx = encoder.run(None, {IMAGES: x})[0]
            if ids_onnx.dtype != np.int32 or ids_onnx.shape != ids_torch.shape:
                raise ProvqError(f"exported encoder gives {ids_onnx.dtype} {ids_onnx.shape}, expected int32 ids")
            same += int((ids_onnx == ids_torch).sum())
            total += ids_torch.size
            recon_torch = model.decode(torch.from_numpy(ids_torch)).numpy()
            recon_onnx = decoder.run(None, {IDS: ids_torch})[0]
            max_diff = max(max_diff, float(np.abs(recon_onnx - recon_torch).max()))
            sizes.append(list(x.shape))
    agreement = same / total
    if agreement < MIN_TOKEN_PARITY or max_diff > 1e-3:
        raise ProvqError(
            f"ONNX Runtime disagrees with PyTorch (ids {agreement:.4%} equal, decoder max diff {max_diff:.2e}): "
            "the export is broken; report it with the checkpoint"
        )
    return {
        "frames": len(frames),
        "shapes": sizes,
        "tokens": total,
        "token_agreement": agreement,
        "decoder_max_abs_diff": max_diff,
        "runtime": "onnxruntime CPUExecutionProvider",
    }


def check_fp16(fp32: tuple[Path, Path], fp16: tuple[Path, Path], downsample: int) -> dict[str, Any]:
    """The FP16 (encoder, decoder) files against the FP32 ones on the parity frames, in ONNX Runtime (CPU) through
    ``rounding_emulation`` (every FP16 tensor rounded; a pessimistic stand-in for FP16 arithmetic).

    ``token_agreement``: share of FP16 encoder ids equal to FP32's; ``decoder_psnr_db``: the FP16 decoder's output
    against the FP32 decoder's on the same (FP32) ids, images in [-1, 1] (peak-to-peak 2).
    """
    enc32, dec32 = cpu_session(fp32[0]), cpu_session(fp32[1])
    enc16, dec16 = (cpu_session(rounding_emulation(p).SerializeToString()) for p in fp16)
    same = total = 0
    squared = values = 0.0
    for x in _parity_batches(downsample):
        ids = enc32.run(None, {IMAGES: x})[0]
        same += int((enc16.run(None, {IMAGES: x})[0] == ids).sum())
        total += ids.size
        diff = dec16.run(None, {IDS: ids})[0].astype(np.float64) - dec32.run(None, {IDS: ids})[0]
        squared += float((diff**2).sum())
        values += diff.size
    agreement = same / total
    if agreement < MIN_FP16_TOKEN_PARITY:
        raise ProvqError(
            f"the FP16 encoder keeps only {agreement:.1%} of the FP32 ids: the FP16 conversion does not suit this "
            "model; report it with the checkpoint"
        )
    mse = squared / values
    return {
        "tokens": total,
        "token_agreement": agreement,
        "decoder_psnr_db": psnr_from_mse(mse, peak=2.0),
        "runtime": "onnxruntime CPUExecutionProvider, FP16 rounding emulated after every node",
    }


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ProvqError(f"--out {out} is a file: choose a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / mf.NAME).is_file():
        raise ProvqError(f"--out {out} is a non-empty directory that is not a provq model: choose another --out")


def export_model(ckpt: str | Path, out: str | Path) -> mf.Manifest:
    """Export a checkpoint (or ``default``) to ``out``; replaces a previous provq model directory there."""
    out = Path(out).expanduser()
    _prepare_out(out)
    state = checkpoint.load(ckpt)
    model = checkpoint.load_tokenizer(ckpt, fake_quant=False)  # the FP32 network (a QAT model without quantizers)
    record = checkpoint.load_tokenizer(ckpt) if state.get(qat.KEY) else None  # QAT: the fake-quantized network
    if not bool(model.quantizer.initialized):
        raise ProvqError(f"{checkpoint.resolve(ckpt)} was saved before its codebook was set: train past the warm-up")
    cfg = model.config
    ds = cfg.downsample
    with staged_directory(out) as staging:
        encoder_path, decoder_path = export_graphs(model, staging)
        parity = check_parity(model, encoder_path, decoder_path)
        half = staging / "encoder.fp16.onnx", staging / "decoder.fp16.onnx"
        for src, dst in zip((encoder_path, decoder_path), half, strict=True):
            try:
                convert_to_fp16(src, dst)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                message = f"the FP16 version of {src.name} is invalid ({first}): report it with the checkpoint"
                raise ProvqError(message) from None
        parity["fp16"] = check_fp16((encoder_path, decoder_path), half, ds)
        files = {
            "fp32": {"encoder": encoder_path.name, "decoder": decoder_path.name},
            "fp16": {"encoder": half[0].name, "decoder": half[1].name},
        }
        int8 = None
        if record is not None:  # the trained scales: INT8 files without calibration, checked against PyTorch
            files |= write_int8(record, {"encoder": encoder_path, "decoder": decoder_path}, staging)
            figures = check_int8(record, staging, files, _parity_batches(ds))
            parity |= figures["parity"]
            qat_state = state[qat.KEY]
            int8 = {"method": "qat", "engine": "modelopt", "frames": qat_state["calibration"]["crops"],
                    "data": state.get("train_config", {}).get("data"), "kept_fp32": qat_state["kept_fp32"],
                    **figures["fp32_vs_record"]}  # fmt: skip
        source = checkpoint.resolve(ckpt)
        fields = ModelManifest(
            preset=state.get("preset"),
            model_config=cfg.to_dict(),
            downsample=ds,
            codebook_size=cfg.codebook_size,
            code_dim=cfg.code_dim,
            codebook_sha256=codebook_sha256(model.quantizer.codebook),
            opset=OPSET,
            files=files,
            sha256={name: sha256_file(staging / name) for parts in files.values() for name in parts.values()},
            exported_with=package_versions(EXPORTED_WITH),
            source={"checkpoint": source.name, "checkpoint_sha256": sha256_file(source), "step": state.get("step")},
            parity=parity,
            gmac_per_megapixel={
                part: round(count_macs(path, *MACS_SIZE, downsample=ds).gmac_per_megapixel, 4)
                for part, path in (("encoder", encoder_path), ("decoder", decoder_path))
            },
            int8=int8,
            model_of_record=None if record is None else "int8",
        )
        write_codebook(staging, model.quantizer.codebook.detach().cpu().float().numpy())
        write_manifest(staging, fields)
    return mf.load_manifest(out)
