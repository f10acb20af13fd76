"""Tests for provq.train.metrics: PSNR and SSIM against known values and scikit-image, code usage."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from provq.train.metrics import PSNR_CAP_DB, CodeUsage, psnr, ssim


def _to_model_range(image01: np.ndarray) -> torch.Tensor:
    """H x W x 3 float in [0, 1] -> 1 x 3 x H x W float32 in [-1, 1]."""
    return torch.from_numpy(image01).float().permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


@pytest.fixture(scope="module")
def astronaut_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 96 x 96 x 3 astronaut crop in [0, 1] and a noisy copy, both float64 exactly representable in fp32."""
    image = transform.resize(data.astronaut(), (96, 96), anti_aliasing=True)
    noisy = np.clip(image + np.random.default_rng(0).normal(0.0, 0.08, image.shape), 0.0, 1.0)
    return image.astype(np.float32).astype(np.float64), noisy.astype(np.float32).astype(np.float64)


def test_psnr_known_values_per_image() -> None:
    target = torch.zeros(3, 3, 8, 8)  # 0.5 on the [0, 1] scale
    reconstruction = torch.stack(
        [
            torch.full((3, 8, 8), 0.2),  # off by 0.1 on [0, 1]: MSE 1e-2 -> 20 dB
            torch.full((3, 8, 8), 0.02),  # off by 0.01: MSE 1e-4 -> 40 dB
            torch.zeros(3, 8, 8),  # identical: capped
        ]
    )
    result = psnr(reconstruction, target)
    assert result.shape == (3,)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, torch.tensor([20.0, 40.0, PSNR_CAP_DB]), rtol=1e-4, atol=1e-4)
    assert PSNR_CAP_DB == 100.0


def test_psnr_clamps_reconstruction() -> None:
    target = torch.full((1, 3, 4, 4), -1.0)
    # 5.0 is clamped to 1.0: a full-range error on [0, 1], MSE 1 -> 0 dB (unclamped would be negative).
    assert psnr(torch.full((1, 3, 4, 4), 5.0), target).item() == pytest.approx(0.0, abs=1e-6)


def test_psnr_matches_skimage(astronaut_pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, noisy = astronaut_pair
    expected = peak_signal_noise_ratio(image, noisy, data_range=1.0)
    assert psnr(_to_model_range(noisy), _to_model_range(image)).item() == pytest.approx(expected, abs=1e-3)


def test_ssim_matches_skimage(astronaut_pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, noisy = astronaut_pair
    expected = structural_similarity(
        image,
        noisy,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )
    assert 0.2 < expected < 0.9  # the noise is strong enough to make this a non-trivial comparison
    result = ssim(_to_model_range(noisy), _to_model_range(image))
    assert result.shape == (1,)
    # Tighter than the required 1e-3: sample instead of population covariance would differ by ~2e-4.
    assert result.item() == pytest.approx(expected, abs=2e-5)


def test_ssim_is_per_image_and_one_for_identical(astronaut_pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, noisy = astronaut_pair
    batch_target = torch.cat([_to_model_range(image), _to_model_range(image)])
    batch_recon = torch.cat([_to_model_range(image), _to_model_range(noisy)])
    result = ssim(batch_recon, batch_target)
    assert result[0].item() == pytest.approx(1.0, abs=1e-5)
    assert result[1].item() == pytest.approx(ssim(batch_recon[1:], batch_target[1:]).item(), abs=1e-6)
    assert result[1].item() < 0.9


def test_ssim_computes_in_float32_for_bf16_inputs(astronaut_pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, noisy = astronaut_pair
    recon = _to_model_range(noisy).bfloat16()
    target = _to_model_range(image).bfloat16()
    result = ssim(recon, target)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, ssim(recon.float(), target.float()), rtol=0, atol=1e-6)


def test_ssim_rejects_images_smaller_than_window() -> None:
    with pytest.raises(ValueError, match="11"):
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


def test_code_usage_uniform_ids() -> None:
    usage = CodeUsage(16)
    usage.update(torch.arange(16).repeat(6).view(4, 3, 8))
    assert usage.counts.dtype == torch.int64
    assert usage.counts.tolist() == [6] * 16
    assert usage.usage() == 1.0
    assert usage.perplexity() == pytest.approx(16.0, rel=1e-4)


def test_code_usage_single_id() -> None:
    usage = CodeUsage(8)
    usage.update(torch.full((5, 5), 3, dtype=torch.int32))
    assert usage.usage() == pytest.approx(1 / 8)
    assert usage.perplexity() == pytest.approx(1.0)


def test_code_usage_hand_computed_distribution_accumulates() -> None:
    usage = CodeUsage(4)
    usage.update(torch.tensor([0, 1]))
    usage.update(torch.tensor([[0], [2]], dtype=torch.int16))
    # counts [2, 1, 1, 0] -> p = [1/2, 1/4, 1/4]; H = 1/2 ln 2 + 1/2 ln 4 = 1.5 ln 2; exp(H) = 2 ** 1.5.
    assert usage.counts.tolist() == [2, 1, 1, 0]
    assert usage.usage() == 0.75
    assert usage.perplexity() == pytest.approx(2**1.5, rel=1e-6)


def test_code_usage_reset_and_empty() -> None:
    usage = CodeUsage(4)
    usage.update(torch.tensor([1, 2, 3]))
    usage.reset()
    assert usage.counts.tolist() == [0, 0, 0, 0]
    assert usage.usage() == 0.0
    assert math.isnan(usage.perplexity())


def test_code_usage_rejects_bad_ids() -> None:
    usage = CodeUsage(4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        usage.update(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        usage.update(torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="integer"):
        usage.update(torch.tensor([0.0, 1.0]))
    assert usage.counts.tolist() == [0, 0, 0, 0]


def test_code_usage_all_reduce_is_noop_without_distributed() -> None:
    assert not dist.is_initialized()
    usage = CodeUsage(3)
    usage.update(torch.tensor([0, 0, 2]))
    usage.all_reduce()
    assert usage.counts.tolist() == [2, 0, 1]


def _all_reduce_worker(rank: int, world_size: int, store_path: str, result_dir: str) -> None:
    """Rank ``rank`` counts id ``rank`` (rank + 1) times, all-reduces and saves its counts."""
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        usage = CodeUsage(4)
        usage.update(torch.full((rank + 1,), rank))
        usage.all_reduce()
        torch.save(usage.counts, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes: ~2.5 s idle, more on a busy machine
def test_code_usage_all_reduce_sums_across_ranks(tmp_path: Path) -> None:
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt", weights_only=True).tolist() == [1, 2, 0, 0]


@pytest.mark.parametrize("jpeg_quality", [15, 60])
def test_torch_metrics_equal_their_numpy_twins_on_real_photos(jpeg_quality: int) -> None:
    """train.metrics (torch, training and the study) against edge_runtime.quality (numpy, the runtime and the
    benchmark): the same PSNR and SSIM of JPEG-compressed sample photos, fed through each side's own preprocessing."""
    from provq.edge_runtime import quality
    from provq.edge_runtime.manifest import default_model_dir
    from provq.train.data import read_image, to_tensor

    for name in ("astronaut.jpg", "chelsea.jpg", "rocket.jpg"):
        rgb = read_image(default_model_dir().parent / "sample" / "images" / name)
        ok, jpeg = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok
        degraded = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
        x, y = to_tensor(degraded[None]), to_tensor(rgb[None])
        expected = quality.psnr(degraded, rgb)
        assert 20.0 < expected < 45.0
        assert float(psnr(x, y)[0]) == pytest.approx(expected, abs=1e-3)
        assert quality.psnr(x.numpy(), y.numpy(), peak=2.0) == pytest.approx(expected, abs=1e-3)
        expected_ssim = quality.ssim(degraded, rgb)
        assert 0.5 < expected_ssim < 0.999
        assert float(ssim(x, y)[0]) == pytest.approx(expected_ssim, abs=1e-4)
    assert quality.psnr(rgb, rgb) == PSNR_CAP_DB == float(psnr(y, y)[0])
