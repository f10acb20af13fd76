"""Image-quality metrics and codebook statistics for evaluating the tokenizer.

Images are passed in the model's convention, B x 3 x H x W float in [-1, 1]; every metric maps them to
the [0, 1] scale (data range 1) before measuring, so the numbers are comparable with the literature.

``psnr`` and ``ssim`` are the torch twins of ``provq.edge_runtime.quality`` (numpy; the runtime and the benchmark):
the same definitions, window and cap, tested equal on real photos (tests/test_metrics.py).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from provq.edge_runtime.quality import PSNR_CAP_DB, SSIM_K1, SSIM_K2, SSIM_SIGMA
from provq.edge_runtime.quality import SSIM_WINDOW as SSIM_WINDOW_SIZE


def _to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map B x C x H x W in [-1, 1] to float32 in [0, 1] (no clamping)."""
    return (images.float() + 1.0) / 2.0


def _check_pair(reconstruction: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless both are B x C x H x W tensors of the same shape."""
    if reconstruction.dim() != 4 or reconstruction.shape != target.shape:
        raise ValueError(
            "expected reconstruction and target of the same shape B x C x H x W, got "
            f"{tuple(reconstruction.shape)} and {tuple(target.shape)}"
        )


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, on the [0, 1] scale.

    Args:
        reconstruction: B x C x H x W float in [-1, 1]; clamped to [-1, 1] first.
        target: B x C x H x W float in [-1, 1].

    Returns:
        B float32 tensor, ``10 * log10(1 / MSE)``. The MSE is floored at ``10 ** (-PSNR_CAP_DB / 10)``,
        so identical images give exactly ``PSNR_CAP_DB`` (100 dB) instead of +inf.
    """
    _check_pair(reconstruction, target)
    recon01 = _to_unit_range(reconstruction.clamp(-1.0, 1.0))
    mse = (recon01 - _to_unit_range(target)).square().mean(dim=(1, 2, 3))
    return -10.0 * torch.log10(mse.clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0)))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """1-D normalised Gaussian window of ``size`` taps (float32, sums to 1)."""
    offsets = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    window = torch.exp(-0.5 * (offsets / sigma).square())
    return window / window.sum()


def _gaussian_filter_valid(maps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of every channel, keeping only the valid (unpadded) region.

    Args:
        maps: N x C x H x W float32.
        window: K float32 1-D window.

    Returns:
        N x C x (H - K + 1) x (W - K + 1) float32.
    """
    channels = maps.shape[1]
    size = window.numel()
    rows = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    cols = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    return F.conv2d(F.conv2d(maps, rows, groups=channels), cols, groups=channels)


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), on the [0, 1] scale.

    Gaussian 11 x 11 window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population (not sample)
    covariances. The SSIM map is computed per channel on the valid region only (no padding; each side
    loses 5 pixels), averaged spatially and then over channels. This matches
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)``. Always computed in float32 with autocast disabled.

    Args:
        reconstruction: B x C x H x W float (any float dtype) in [-1, 1]; clamped to [-1, 1] first.
        target: B x C x H x W float in [-1, 1]; H and W must be at least 11.

    Returns:
        B float32 tensor, at most 1 (1 for identical images).
    """
    _check_pair(reconstruction, target)
    if min(target.shape[-2:]) < SSIM_WINDOW_SIZE:
        raise ValueError(f"ssim needs H and W >= {SSIM_WINDOW_SIZE}, got {tuple(target.shape[-2:])}")
    with torch.autocast(device_type=target.device.type, enabled=False):
        x = _to_unit_range(reconstruction.clamp(-1.0, 1.0))
        y = _to_unit_range(target)
        window = _gaussian_window(SSIM_WINDOW_SIZE, SSIM_SIGMA, target.device)
        channels = x.shape[1]
        filtered = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
        mu_x, mu_y, e_xx, e_yy, e_xy = filtered.split(channels, dim=1)
        var_x = e_xx - mu_x.square()
        var_y = e_yy - mu_y.square()
        cov_xy = e_xy - mu_x * mu_y
        c1 = SSIM_K1**2
        c2 = SSIM_K2**2
        numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
        denominator = (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
        return (numerator / denominator).mean(dim=(1, 2, 3))


class CodeUsage:
    """Histogram of token ids over a codebook of ``codebook_size`` entries.

    ``counts`` is a ``codebook_size`` int64 tensor on ``device``. Ids passed to :meth:`update` may live
    on any device; they are counted there and the histogram is added to ``counts``.
    """

    def __init__(self, codebook_size: int, device: torch.device | str = "cpu") -> None:
        """Create an empty histogram for ids in ``[0, codebook_size)``."""
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.int64, device=device)

    def update(self, ids: torch.Tensor) -> None:
        """Add token ids to the histogram.

        Args:
            ids: integer tensor of any shape with values in ``[0, codebook_size)``.
        """
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"token ids must have an integer dtype, got {ids.dtype}")
        flat = ids.reshape(-1).long()
        if flat.numel() == 0:
            return
        low, high = torch.aminmax(flat)
        if low.item() < 0 or high.item() >= self.codebook_size:
            raise ValueError(
                f"token ids must lie in [0, {self.codebook_size}), got range [{low.item()}, {high.item()}]"
            )
        histogram = torch.bincount(flat, minlength=self.codebook_size)
        self.counts += histogram.to(self.counts.device)

    def usage(self) -> float:
        """Fraction of codes seen at least once, in [0, 1] (0 for an empty histogram)."""
        return (self.counts > 0).sum().item() / self.codebook_size

    def perplexity(self) -> float:
        """``exp`` of the natural-log entropy of the id distribution, in [1, codebook_size].

        Returns NaN for an empty histogram (no ids seen since the last reset).
        """
        total = self.counts.sum().item()
        if total == 0:
            return math.nan
        probabilities = self.counts[self.counts > 0].double() / total
        entropy = -(probabilities * probabilities.log()).sum().item()
        return math.exp(entropy)

    def all_reduce(self) -> None:
        """Sum ``counts`` over all torch.distributed ranks in place; a no-op when not distributed.

        Every rank must call it. With the NCCL backend a CPU histogram is reduced via the current CUDA
        device and copied back.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        needs_cuda = dist.get_backend() == dist.Backend.NCCL and self.counts.device.type != "cuda"
        buffer = self.counts.cuda() if needs_cuda else self.counts
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        if needs_cuda:
            self.counts.copy_(buffer)

    def reset(self) -> None:
        """Zero the histogram."""
        self.counts.zero_()
