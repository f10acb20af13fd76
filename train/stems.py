"""Stems, heads and shortcuts that move resolution into channels without learned parameters.

Layouts (N batch, C channels, p the stem's patch size, a power of two):

    space-to-depth   N x C x H x W  ->  N x C*p*p x H/p x W/p, channel c*p*p + dy*p + dx holds pixel (dy, dx) of each
                     p x p block (torch's pixel_unshuffle order); depth-to-space is its inverse (pixel_shuffle)
    Haar analysis    N x 3 x H x W  ->  N x 3*p*p x H/p x W/p, channel c*p*p + k holds Haar coefficient k of colour c
                     (k = 0 is the low-pass band: the block mean times p); an orthonormal transform of each block

``haar_matrix`` is the full 2-D Haar wavelet packet of a p x p block, as NVIDIA's Cosmos tokenizer's patcher applies
it: one level splits every 2 x 2 block into its LL, LH, HL, HH bands; a second level splits each band again
(p = 4, 16 bands per colour). Analysis runs as one stride-p Conv with fixed weights (3 groups, one per colour);
synthesis folds the inverse (the transpose: the matrix is orthogonal) into the weights of the learned Conv before
it and ends with depth-to-space, so the exported decoder has no ConvTranspose (ONNX Runtime cannot run it in INT8)
and its last Conv is still the learned one that writes the image.

The DC-AE shortcuts (Chen et al., "Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models",
2024) add a non-parametric path around each resolution change: down = space-to-depth by 2 then the mean of each
group of consecutive channels down to the output width; up = each channel repeated to 4x the output width, then
depth-to-space by 2. The channel mean and repeat run as grouped 1x1 Convs with fixed weights (1/g and 1).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

HAAR_2X2 = 0.5 * torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
)  # rows LL, LH, HL, HH; columns the 2 x 2 block's pixels (0,0), (0,1), (1,0), (1,1)


def haar_matrix(patch: int) -> torch.Tensor:
    """p*p x p*p orthonormal analysis matrix: coefficients = M @ block.flatten() (block row-major, p = 2 or 4...).

    Level by level: a pixel of the p x p block at (y, x) has at each level l (finest first) the offset
    ((y >> l) & 1, (x >> l) & 1) inside its 2 x 2 group, and the band index of the coarser level is the most
    significant digit (base 4) of the coefficient index.
    """
    levels = patch.bit_length() - 1
    if patch < 2 or 1 << levels != patch:
        raise ValueError(f"Haar patch size must be a power of two >= 2, got {patch}")
    matrix = torch.ones(1, patch * patch, dtype=torch.float64)
    rows = torch.arange(patch).repeat_interleave(patch)
    cols = torch.arange(patch).repeat(patch)
    haar = HAAR_2X2.double()
    for level in range(levels):
        offset = ((rows >> level) & 1) * 2 + ((cols >> level) & 1)  # position inside this level's 2 x 2 group
        matrix = (haar[:, offset].unsqueeze(1) * matrix.unsqueeze(0)).reshape(-1, patch * patch)
    return matrix.float()


class HaarAnalysis(nn.Module):
    """N x 3 x H x W -> N x 3*p*p x H/p x W/p Haar coefficients (see the module docstring); no parameters."""

    def __init__(self, patch: int, channels: int = 3) -> None:
        super().__init__()
        self.patch = patch
        self.channels = channels
        kernel = haar_matrix(patch).reshape(patch * patch, 1, patch, patch).repeat(channels, 1, 1, 1)
        self.register_buffer("kernel", kernel, persistent=False)  # fixed: rebuilt, never stored in checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.patch, groups=self.channels)


def haar_synthesis(coefficients: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of HaarAnalysis: N x C*p*p x h x w coefficients -> N x C x h*p x w*p (for tests and reference)."""
    n, c, h, w = coefficients.shape
    mix = haar_matrix(patch).to(coefficients)  # orthogonal: its transpose inverts it
    blocks = torch.einsum("kj,nckhw->ncjhw", mix, coefficients.reshape(n, c // (patch * patch), patch * patch, h, w))
    return F.pixel_shuffle(blocks.reshape(n, c, h, w), patch)


class HaarHead(nn.Module):
    """Learned 3x3 Conv to Haar coefficients, inverse Haar, depth-to-space: N x C x h x w -> N x out x h*p x w*p.

    The inverse transform is linear, so it is applied to the Conv's weights and bias (a p*p x p*p mixing per colour)
    rather than to its output: the same function as the Conv followed by a fixed 1x1 mixing Conv. ``folded`` gives
    the plain Conv + PixelShuffle that the export uses, so the graph holds one Conv with constant weights.
    """

    def __init__(self, in_channels: int, patch: int, out_channels: int = 3) -> None:
        super().__init__()
        self.patch = patch
        self.conv = nn.Conv2d(in_channels, out_channels * patch * patch, 3, padding=1)
        self.register_buffer("mix", haar_matrix(patch), persistent=False)  # coefficients k -> pixels j: mix[k, j]

    def pixel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight out*p*p x Cin x 3 x 3, bias out*p*p) producing pixels in pixel_shuffle's channel order."""
        shape = self.conv.weight.shape
        weight = self.conv.weight.reshape(-1, self.patch**2, *shape[1:])  # colour x coefficient x Cin x 3 x 3
        weight = torch.einsum("kj,ckiab->cjiab", self.mix, weight).reshape(shape)
        bias = (self.conv.bias.reshape(-1, self.patch**2) @ self.mix).reshape(-1)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.pixel_weights()
        return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), self.patch)

    def folded(self) -> nn.Sequential:
        """An equivalent Conv2d + PixelShuffle holding the mixed weights (a copy: training this one changes nothing)."""
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 3, padding=1)
        with torch.no_grad():
            weight, bias = self.pixel_weights()
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        return nn.Sequential(conv, nn.PixelShuffle(self.patch))


def fold_haar_heads(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every HaarHead replaced by its ``folded`` Conv + PixelShuffle (same outputs)."""
    out = copy.deepcopy(module)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, HaarHead):
                setattr(parent, name, child.folded())
    return out


def _check_ratio(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what}: {numerator} is not a multiple of {denominator}")
    return numerator // denominator


class DownShortcut(nn.Module):
    """Space-to-channel shortcut: N x Cin x H x W -> N x Cout x H/2 x W/2 (4*Cin must be a multiple of Cout).

    The mean over each group of g = 4*Cin/Cout consecutive channels runs as a grouped 1x1 Conv with fixed weights
    1/g: the exported graph then needs no shape arithmetic (a reshape by the runtime batch and size would).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        group = _check_ratio(4 * in_channels, out_channels, "DC-AE down shortcut 4 x in_channels / out_channels")
        self.register_buffer("kernel", torch.full((out_channels, group, 1, 1), 1.0 / group), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pixel_unshuffle(x, 2)
        return F.conv2d(y, self.kernel.to(y.dtype), groups=self.kernel.shape[0])


class UpShortcut(nn.Module):
    """Channel-to-space shortcut: N x Cin x h x w -> N x Cout x 2h x 2w (4*Cout must be a multiple of Cin).

    Each channel is repeated r = 4*Cout/Cin times (a grouped 1x1 Conv with fixed weights 1, for the reason above),
    then depth-to-space by 2.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        repeats = _check_ratio(4 * out_channels, in_channels, "DC-AE up shortcut 4 x out_channels / in_channels")
        self.groups = in_channels
        self.register_buffer("kernel", torch.ones(in_channels * repeats, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.kernel.to(x.dtype), groups=self.groups), 2)


class Downsample(nn.Module):
    """Stride-2 3x3 Conv plus the DC-AE down shortcut: N x Cin x H x W -> N x Cout x H/2 x W/2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.shortcut = DownShortcut(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class Upsample(nn.Module):
    """Nearest 2x resize + 3x3 Conv plus the DC-AE up shortcut: N x Cin x h x w -> N x Cout x 2h x 2w."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.shortcut = UpShortcut(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")) + self.shortcut(x)
