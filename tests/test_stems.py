"""Stems and heads: Haar analysis/synthesis, DC-AE shortcuts, round trips at non-square sizes, old checkpoints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from provq.edge_runtime.manifest import default_model_dir, load_manifest, sha256_file
from provq.edge_runtime.preprocess import prepare
from provq.train import checkpoint
from provq.train.data import sample_dir
from provq.train.errors import ProvqError
from provq.train.model import Tokenizer
from provq.train.presets import PRESETS, ModelConfig
from provq.train.stems import (
    DownShortcut,
    HaarAnalysis,
    HaarHead,
    UpShortcut,
    fold_haar_heads,
    haar_matrix,
    haar_synthesis,
)

CANDIDATES = [name for name in PRESETS if name.startswith("tiny-") and name != "tiny-conv"]  # the cheaper stems


def _photo(size: tuple[int, int] = (96, 64)) -> torch.Tensor:
    """A shipped sample photo as 1 x 3 x H x W in [-1, 1] (W x H = ``size``)."""
    path = sorted((sample_dir() / "images").glob("*.jpg"))[0]
    rgb = cv2.cvtColor(cv2.resize(cv2.imread(str(path)), size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.mark.parametrize("patch", [2, 4])
def test_haar_analysis_and_synthesis_are_exact_inverses(patch: int) -> None:
    matrix = haar_matrix(patch)
    torch.testing.assert_close(matrix @ matrix.T, torch.eye(patch * patch), atol=1e-6, rtol=0)
    x = _photo()
    coefficients = HaarAnalysis(patch)(x)
    assert coefficients.shape == (1, 3 * patch * patch, 64 // patch, 96 // patch)
    torch.testing.assert_close(haar_synthesis(coefficients, patch), x, atol=1e-5, rtol=0)
    # band 0 of each colour is the low pass: the block mean times p; the energy is preserved (orthonormal)
    torch.testing.assert_close(coefficients[:, :: patch * patch], F.avg_pool2d(x, patch) * patch, atol=1e-5, rtol=0)
    assert float(coefficients.pow(2).sum()) == pytest.approx(float(x.pow(2).sum()), rel=1e-5)


def test_two_haar_levels_are_the_one_level_transform_applied_to_every_band() -> None:
    """Cosmos' patcher at p = 4: the 2 x 2 Haar, then the 2 x 2 Haar again on each of the 12 bands."""
    x = _photo()
    twice = HaarAnalysis(2, channels=12)(HaarAnalysis(2)(x))  # channel: (colour, band1) * 4 + band2
    once = HaarAnalysis(4)(x)  # channel: colour * 16 + band2 * 4 + band1
    reordered = twice.reshape(1, 3, 4, 4, 16, 24).transpose(2, 3).reshape(once.shape)
    torch.testing.assert_close(once, reordered, atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch", [2, 4])
def test_haar_head_is_a_conv_then_the_inverse_haar_and_folds_into_one_conv(patch: int) -> None:
    torch.manual_seed(0)
    head = HaarHead(16, patch)
    x = torch.randn(2, 16, 5, 7)
    expected = haar_synthesis(head.conv(x), patch)  # learned Conv to coefficients, then the fixed synthesis
    torch.testing.assert_close(head(x), expected, atol=1e-5, rtol=0)
    folded = fold_haar_heads(torch.nn.Sequential(head))
    assert isinstance(folded[0], torch.nn.Sequential) and isinstance(folded[0][0], torch.nn.Conv2d)
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=0)


def test_dcae_shortcuts_are_space_to_channel_mean_and_channel_to_space_repeat() -> None:
    x = _photo()
    torch.testing.assert_close(DownShortcut(3, 12)(x), F.pixel_unshuffle(x, 2))  # group 1: space-to-depth itself
    # 3 -> 6 channels: each output is the mean of 2 consecutive space-to-depth channels (a horizontal pixel pair)
    pairs = F.pixel_unshuffle(x, 2).reshape(1, 6, 2, 32, 48).mean(2)
    torch.testing.assert_close(DownShortcut(3, 6)(x), pairs, atol=1e-6, rtol=0)
    torch.testing.assert_close(UpShortcut(12, 3)(F.pixel_unshuffle(x, 2)), x)  # repeats 1: depth-to-space
    y = UpShortcut(6, 3)(pairs)  # 6 -> 3 channels: each channel twice, then depth-to-space
    torch.testing.assert_close(y[..., 0::2], y[..., 1::2])  # the horizontal pairs are duplicated back
    torch.testing.assert_close(DownShortcut(3, 6)(y), pairs, atol=1e-6, rtol=0)


TINY_WIDTHS = {  # every stem at small widths, for speed
    "conv": ModelConfig(widths=(8, 16, 16, 16), latent_channels=16),
    "conv-dcae": ModelConfig(widths=(8, 16, 16, 16), latent_channels=16, shortcuts=True),
    "s2d": ModelConfig(widths=(8, 16, 16), latent_channels=16, stem="s2d", patch=2),
    "s2d4-dcae": ModelConfig(widths=(16, 32), latent_channels=32, stem="s2d", patch=4, shortcuts=True),
    "haar2": ModelConfig(widths=(8, 16, 16), latent_channels=16, stem="haar", patch=2),
    "haar4-dcae": ModelConfig(widths=(16, 32), latent_channels=32, stem="haar", patch=4, shortcuts=True),
}


@pytest.mark.parametrize("name", list(TINY_WIDTHS))
def test_every_stem_round_trips_non_square_frames_and_trains(name: str) -> None:
    cfg = TINY_WIDTHS[name]
    assert cfg.downsample == 8
    torch.manual_seed(0)
    model = Tokenizer(cfg).eval()
    for height, width in ((40, 72), (64, 24)):
        x = torch.rand(2, 3, height, width) * 2 - 1
        with torch.no_grad():
            ids = model.encode(x)
            y = model.decode(ids)
        assert ids.shape == (2, height // 8, width // 8) and ids.dtype == torch.int32
        assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    model.train()
    out = model(_photo((48, 32)), alpha=1.0)  # continuous warm-up: every encoder and decoder weight gets a gradient
    F.mse_loss(out.reconstruction, _photo((48, 32))).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if not n.startswith("quantizer.")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert not any("kernel" in key or "mix" in key for key in model.state_dict())  # fixed weights are not stored


@pytest.mark.parametrize("name", CANDIDATES)
def test_candidate_presets_keep_the_token_rate_and_the_size(name: str) -> None:
    cfg = PRESETS[name]
    assert (cfg.downsample, cfg.codebook_size, cfg.code_dim) == (8, 1024, 8)
    assert cfg.stem in ("s2d", "haar") and cfg.to_dict()["stem"] == cfg.stem  # set explicitly, stored in checkpoints
    assert 1.0e6 < sum(p.numel() for p in Tokenizer(cfg).parameters()) < 3.0e6
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stem": "patchify"}, "unknown stem 'patchify'"),
        ({"stem": "s2d"}, "use patch 1 for 'conv', 2 or 4 otherwise"),
        ({"patch": 2}, "use patch 1 for 'conv'"),
        ({"stem": "haar", "patch": 8}, "2 or 4"),
        ({"widths": (32, 48, 96), "shortcuts": True}, "multiple of the next"),
    ],
)
def test_bad_stem_arguments_are_one_clear_error(fields: dict, message: str) -> None:
    with pytest.raises(ProvqError, match=message):
        ModelConfig.from_dict({**ModelConfig().to_dict(), **fields})


def test_a_checkpoint_written_before_the_stem_fields_rebuilds_the_conv_network(tmp_path: Path) -> None:
    """Checkpoints written before `stem`, `patch` and `shortcuts` existed describe the `tiny-conv` network: they load
    strictly (no missing or unexpected keys) and give the ids of the network they were saved from."""
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["tiny-conv"]).eval()
    config = {k: v for k, v in PRESETS["tiny-conv"].to_dict().items() if k not in ("stem", "patch", "shortcuts")}
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "preset": "tiny", "step": 0,
             "model_config": config, "model": model.state_dict()}  # fmt: skip
    checkpoint.save_atomic(state, tmp_path / "old.pt")
    assert ModelConfig.from_dict(config) == PRESETS["tiny-conv"] == ModelConfig()
    loaded = checkpoint.load_tokenizer(tmp_path / "old.pt")
    x = _photo((96, 64))
    with torch.no_grad():
        ids = model.encode(x)
        assert torch.equal(loaded.encode(x), ids) and torch.equal(loaded.decode(ids), model.decode(ids))


def test_the_shipped_checkpoint_gives_the_shipped_onnx_files_ids(unseen_photo_dir: Path) -> None:
    """default-tiny.pt (the Haar-stem `tiny`) loads strictly and gives the ids of the ONNX files exported from it."""
    state = checkpoint.load("default")
    assert ModelConfig.from_dict(state["model_config"]) == PRESETS["tiny"]
    shipped = load_manifest(default_model_dir())
    assert shipped.data["source"]["checkpoint_sha256"] == sha256_file(checkpoint.default_checkpoint())
    # strict load_state_dict: no missing or unexpected keys; the FP32 files hold the network without fake quantization
    model = checkpoint.load_tokenizer("default", fake_quant=False)
    checkpoint.load_tokenizer("default")
    encoder = ort.InferenceSession(str(shipped.path("fp32", "encoder")), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(shipped.path("fp32", "decoder")), providers=["CPUExecutionProvider"])
    tokens = 0
    for path in sorted(unseen_photo_dir.glob("*.png")):
        x, _ = prepare(cv2.imread(str(path)), 8)
        with torch.no_grad():
            ids = model.encode(torch.from_numpy(x)).numpy()
            recon = model.decode(torch.from_numpy(ids)).numpy()
        np.testing.assert_array_equal(ids, encoder.run(None, {"images": x})[0])
        np.testing.assert_allclose(decoder.run(None, {"ids": ids})[0], recon, atol=1e-4)
        tokens += ids.size
    assert tokens >= 800
