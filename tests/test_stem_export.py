"""Every stem through provq-export (ONNX parity, FP16, TensorRT check), INT8 calibration, and the MAC count."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from provq.calibration.calibrate import default_keep_fp32
from provq.edge_runtime.manifest import default_model_dir, load_manifest
from provq.export.macs import count_macs
from provq.export.onnx_export import export_model, parity_frames
from provq.export.trt_check import check_model_dir
from provq.train import checkpoint
from provq.train.model import Tokenizer
from provq.train.presets import PRESETS, ModelConfig

SMALL = {  # the candidate presets' stems at small widths, for speed; tiny-s2d and tiny-haar are these without the
    # shortcuts, so these two graphs hold every operator of the four candidates
    "s2d-dcae": ModelConfig(widths=(8, 16, 16), latent_channels=16, codebook_size=64, stem="s2d", patch=2,
                            shortcuts=True),
    "haar-dcae": ModelConfig(widths=(16, 32), latent_channels=32, codebook_size=64, stem="haar", patch=4,
                             shortcuts=True),
}  # fmt: skip


def write_checkpoint(cfg: ModelConfig, path: Path) -> Path:
    """An untrained model as provq-train would save it, with a k-means codebook on its latents of real frames.

    A small random perturbation of every weight stands in for training: the zero-initialised last Conv of every
    residual block would otherwise give identical tensors, which the ONNX exporter merges into one initializer.
    """
    torch.manual_seed(0)
    model = Tokenizer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        latents = [model.latents(torch.from_numpy(f)).permute(0, 2, 3, 1).reshape(-1, cfg.code_dim)
                   for f in parity_frames(cfg.downsample)]  # fmt: skip
    model.quantizer.init_from_latents(torch.cat(latents), seed=0)
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "preset": None, "step": 0,
             "model_config": cfg.to_dict(), "model": model.state_dict()}  # fmt: skip
    checkpoint.save_atomic(state, path)
    return path


@pytest.fixture(scope="module", params=list(SMALL))
def candidate(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(name, checkpoint, model directory written by export_model)."""
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = write_checkpoint(SMALL[request.param], folder / "last.pt")
    export_model(ckpt, folder / "model")  # refuses an export whose ONNX Runtime ids or images disagree with torch
    return request.param, ckpt, folder / "model"


def test_every_stem_exports_with_parity_and_passes_the_tensorrt_check(candidate: tuple[str, Path, Path]) -> None:
    _, ckpt, model_dir = candidate
    manifest = load_manifest(model_dir)
    assert manifest.precisions == ["fp32", "fp16"] and manifest.downsample == 8
    assert manifest.data["parity"]["token_agreement"] >= 0.999 and manifest.data["parity"]["fp16"]["tokens"] > 0
    assert [str(f) for f in check_model_dir(model_dir)] == []
    decoder = onnx.load(str(manifest.path("fp32", "decoder"))).graph
    ops = [n.op_type for n in decoder.node]
    assert "ConvTranspose" not in ops and "Einsum" not in ops
    last_conv = [n for n in decoder.node if n.op_type == "Conv"][-1]
    assert [n.op_type for n in decoder.node if last_conv.output[0] in n.input] == ["DepthToSpace"]
    # dynamic batch and non-square sizes in ONNX Runtime, ids equal to PyTorch's
    model = checkpoint.load_tokenizer(ckpt)
    encoder = ort.InferenceSession(str(manifest.path("fp32", "encoder")), providers=["CPUExecutionProvider"])
    x = np.concatenate([parity_frames(8)[0][:, :, :40, :72]] * 2)  # 2 x 3 x 40 x 72 of a real photo
    ids = encoder.run(None, {"images": x})[0]
    with torch.no_grad():
        np.testing.assert_array_equal(ids, model.encode(torch.from_numpy(x)).numpy())
    assert ids.shape == (2, 5, 9)
    compute = manifest.gmac_per_megapixel
    for part in ("encoder", "decoder"):
        counted = count_macs(manifest.path("fp32", part), 40, 72, downsample=8).gmac_per_megapixel
        assert counted == pytest.approx(compute[part], abs=1e-4) and compute[part] > 0


def test_a_haar_stem_keeps_its_analysis_and_the_conv_reading_its_bands_fp32(candidate: tuple[str, Path, Path]) -> None:
    name, _, model_dir = candidate
    manifest = load_manifest(model_dir)
    keep = default_keep_fp32(manifest)
    encoder = [n for n in onnx.load(str(manifest.path("fp32", "encoder"))).graph.node if n.op_type == "Conv"]
    head = {n.name for n in encoder[:2]}
    if name.startswith("haar"):
        assert head <= set(keep["encoder"])  # the fixed analysis (a Constant weight) and the first learned Conv
    else:
        assert not head & set(keep["encoder"])  # a space-to-depth stem's channels are pixels: one scale fits them


def test_int8_calibration_keeps_the_head_conv_fp32(candidate: tuple[str, Path, Path], tmp_path: Path) -> None:
    name, _, exported = candidate
    if name != "haar-dcae":  # its graphs hold every operator the others do (Haar stem and head, shortcuts' reshapes)
        pytest.skip("calibrated for haar-dcae only")
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    args = ["--data", "sample://", "--data", "sample://images", "--frames", "64", "--size", "64x64",
            "--eval-frames", "4", "--method", "minmax"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "provq.calibration.cli", str(model_dir), *args],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = load_manifest(model_dir)
    assert manifest.precisions == ["fp32", "fp16", "int8"] and manifest.has("int8-cpu")
    assert [str(f) for f in check_model_dir(model_dir)] == []
    decoder = onnx.load(str(manifest.path("int8", "decoder"))).graph
    producers = {out: n for n in decoder.node for out in n.output}
    last_conv = [n for n in decoder.node if n.op_type == "Conv"][-1]

    def dequantized(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    assert not dequantized(last_conv.input[0]) and not dequantized(last_conv.input[1])  # the head stays FP32
    quantized = [n for n in decoder.node if n.op_type == "Conv" and dequantized(n.input[1])]
    assert quantized  # the body is INT8
    x = parity_frames(8)[1]
    for precision in ("int8", "int8-cpu"):
        enc, dec = (ort.InferenceSession(str(manifest.path(precision, p)), providers=["CPUExecutionProvider"])
                    for p in ("encoder", "decoder"))  # fmt: skip
        out = dec.run(None, {"ids": enc.run(None, {"images": x})[0]})[0]
        assert out.shape == x.shape and np.isfinite(out).all()


def test_mac_count_of_the_conv_stem_network_matches_a_hand_count(tmp_path: Path) -> None:
    """The exported graphs of the `tiny-conv` network against its layers counted by hand at 256 x 256."""
    p = 256 * 256  # full-resolution positions; level l has p / 4**l
    encoder = (9 * 3 * 32 * p + 2 * 9 * 32 * 32 * p  # stem, residual block at 32
               + 9 * 32 * 64 * p // 4 + 2 * 9 * 64 * 64 * p // 4  # stride-2 conv to 64, block
               + 9 * 64 * 96 * p // 16 + 2 * 9 * 96 * 96 * p // 16  # to 96, block
               + 9 * 96 * 112 * p // 64 + 4 * 9 * 112 * 112 * p // 64  # to 112, block + mid block
               + 9 * 112 * 112 * p // 64 + 112 * 8 * p // 64  # output conv, 1x1 projection to the code dim
               + 8 * 1024 * p // 64)  # nearest-code distances: one 8 x 1024 MatMul per token  # fmt: skip
    decoder = (8 * 112 * p // 64 + 9 * 112 * 112 * p // 64 + 4 * 9 * 112 * 112 * p // 64  # 1x1, input conv, blocks
               + 9 * 112 * 96 * p // 16 + 2 * 9 * 96 * 96 * p // 16  # nearest 2x + conv to 96, block
               + 9 * 96 * 64 * p // 4 + 2 * 9 * 64 * 64 * p // 4  # to 64, block
               + 9 * 64 * 32 * p + 2 * 9 * 32 * 32 * p + 9 * 32 * 3 * p)  # to 32, block, head  # fmt: skip
    model = tmp_path / "model"
    export_model(write_checkpoint(PRESETS["tiny-conv"], tmp_path / "last.pt"), model)
    enc = count_macs(model / "encoder.onnx", 256, 256, downsample=8)
    dec = count_macs(model / "decoder.onnx", 256, 256, downsample=8)
    assert (enc.macs, dec.macs) == (encoder, decoder)
    assert enc.by_op["MatMul"] == 8 * 1024 * p // 64 and "MatMul" not in dec.by_op
    assert enc.gmac_per_megapixel + dec.gmac_per_megapixel == pytest.approx(161.9, abs=0.05)
    shipped = load_manifest(default_model_dir()).gmac_per_megapixel  # the Haar-stem default: 2.5x less
    assert shipped["encoder"] + shipped["decoder"] == pytest.approx(63.9, abs=0.05)
    wide = count_macs(model / "decoder.onnx", 192, 320, downsample=8)  # per megapixel it does not depend on size
    assert wide.gmac_per_megapixel == pytest.approx(dec.gmac_per_megapixel, rel=1e-9)
