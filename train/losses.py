"""Training losses: pixel reconstruction, VGG16 perceptual distance and the PatchGAN adversarial terms.

Images are B x 3 x H x W float in [-1, 1] throughout. Nothing here downloads weights: the perceptual
loss reads VGG16 (and optionally LPIPS) weights from local files given by the user.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RECONSTRUCTION_KINDS = ("l1", "l2", "l1+l2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's VGG16 ``features`` layout: conv output widths, "M" = 2x2 max pool. Each conv is followed
# by a ReLU, so the conv at ``features.i`` has its ReLU at ``features.i+1``. The final max pool
# (features.30) is never needed and is left out.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
# Indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, and their widths.
_TAP_INDICES = (3, 8, 15, 22, 29)
_TAP_CHANNELS = (64, 128, 256, 512, 512)

_VGG_EXPECTED = "a torchvision VGG16 state dict (keys features.0.weight ... features.28.bias, e.g. vgg16-397923af.pth)"
_LPIPS_EXPECTED = (
    "the lpips package's VGG linear-layer weights (keys lin0.model.1.weight ... lin4.model.1.weight, "
    "shapes 1 x C x 1 x 1, file lpips/weights/v0.1/vgg.pth)"
)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Pixel loss between two tensors of the same shape (e.g. B x 3 x H x W in [-1, 1]).

    Args:
        reconstruction: decoder output.
        target: ground truth, same shape.
        kind: "l1" (mean absolute error), "l2" (mean squared error) or "l1+l2" (their sum).

    Returns:
        Scalar tensor (mean over all elements).
    """
    if kind not in RECONSTRUCTION_KINDS:
        raise ValueError(f"unknown reconstruction loss kind {kind!r}; valid kinds: {RECONSTRUCTION_KINDS}")
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"shape mismatch: reconstruction {tuple(reconstruction.shape)} vs target {tuple(target.shape)}"
        )
    if kind == "l1":
        return F.l1_loss(reconstruction, target)
    if kind == "l2":
        return F.mse_loss(reconstruction, target)
    return F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target)


def _load_weights_file(path: Path, expected: str) -> Mapping[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; any failure becomes a one-line ValueError."""
    if not path.is_file():
        raise ValueError(f"weights file {path}: not found or not a file; expected {expected}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"weights file {path}: refused by weights-only loading (it pickles objects other than tensors "
            f"and containers, or is not a torch file); expected {expected}"
        ) from error
    # torch.load raises many other types (RuntimeError, EOFError, OSError, ...) for unreadable files;
    # they all mean the same thing to the caller.
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise ValueError(f"weights file {path}: cannot be read ({reason}); expected {expected}") from error
    if not isinstance(payload, Mapping):
        raise ValueError(f"weights file {path}: holds a {type(payload).__name__}, not a dict; expected {expected}")
    return payload


def _check_tensor(
    state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], path: Path, expected: str
) -> torch.Tensor:
    """Return ``state[key]`` if it is a tensor of ``shape``, else raise a one-line ValueError."""
    if key not in state:
        raise ValueError(f"weights file {path}: missing key {key!r}; expected {expected}")
    value = state[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"weights file {path}: {key!r} is a {type(value).__name__}, not a tensor; expected {expected}")
    if tuple(value.shape) != shape:
        raise ValueError(
            f"weights file {path}: {key!r} has shape {tuple(value.shape)}, needs {shape}; expected {expected}"
        )
    return value


def _build_vgg16_features() -> nn.Sequential:
    """VGG16 ``features`` up to relu5_3 (indices 0..29), with torchvision's module indices."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_channels = int(item)
    return nn.Sequential(*layers)


def _vgg16_state(features: nn.Sequential, path: Path) -> dict[str, torch.Tensor]:
    """Validated ``features`` state dict (keys without the ``features.`` prefix) read from ``path``."""
    state = _load_weights_file(path, _VGG_EXPECTED)
    return {
        name: _check_tensor(state, f"features.{name}", tuple(param.shape), path, _VGG_EXPECTED)
        for name, param in features.state_dict().items()
    }


def _lpips_weights(path: Path) -> list[torch.Tensor]:
    """Per-layer LPIPS channel weights read from ``path``, each a C float32 tensor."""
    state = _load_weights_file(path, _LPIPS_EXPECTED)
    return [
        _check_tensor(state, f"lin{i}.model.1.weight", (1, c, 1, 1), path, _LPIPS_EXPECTED).float().flatten()
        for i, c in enumerate(_TAP_CHANNELS)
    ]


def _unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale B x C x h x w features to unit L2 norm along C at every position."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """Frozen VGG16 feature distance; real LPIPS-VGG when LPIPS linear weights are given.

    Features are taken at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, normalised to unit length
    over channels, and compared by squared difference. Per layer, the channel differences are summed
    (uniformly, or weighted by the LPIPS linear layers) and averaged spatially; layers are summed.
    The network is frozen and always in eval mode, but gradients flow to the inputs.
    """

    def __init__(self, vgg_weights: str | Path, lpips_weights: str | Path | None = None) -> None:
        """Build the network and load its weights.

        Args:
            vgg_weights: local torchvision-format VGG16 state dict (``features.*`` keys are used, others
                such as ``classifier.*`` ignored).
            lpips_weights: optional local LPIPS ``vgg.pth`` with keys ``lin{0..4}.model.1.weight``.

        Raises:
            ValueError: a file is missing, unreadable, not a weights-only state dict, or lacks a key or
                has a mis-shaped tensor.
        """
        super().__init__()
        self.features = _build_vgg16_features()
        self.features.load_state_dict(_vgg16_state(self.features, Path(vgg_weights)))
        self.features.requires_grad_(False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        # LPIPS channel weights of all tap layers concatenated (sum of _TAP_CHANNELS values), or None.
        channel_weights = None if lpips_weights is None else torch.cat(_lpips_weights(Path(lpips_weights)))
        self.register_buffer("channel_weights", channel_weights, persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Keep the frozen network in eval mode whatever ``mode`` a parent module requests."""
        return super().train(False)

    def _tapped_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of B x 3 x H x W images in [-1, 1], one per tap layer."""
        x = ((images + 1.0) / 2.0 - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAP_INDICES:
                taps.append(_unit_normalize(x))
        return taps

    def distance(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image perceptual distance.

        Args:
            reconstruction: B x 3 x H x W float in [-1, 1], H and W >= 16.
            target: B x 3 x H x W float in [-1, 1].

        Returns:
            B tensor, >= 0 (0 for identical images). Without LPIPS weights each layer contributes at
            most 4.
        """
        if reconstruction.shape != target.shape or reconstruction.dim() != 4 or target.shape[1] != 3:
            raise ValueError(
                "expected reconstruction and target of the same shape B x 3 x H x W, got "
                f"{tuple(reconstruction.shape)} and {tuple(target.shape)}"
            )
        if min(target.shape[-2:]) < 16:
            raise ValueError(f"PerceptualLoss needs H and W >= 16, got {tuple(target.shape[-2:])}")
        batch = target.shape[0]
        taps = self._tapped_features(torch.cat([reconstruction, target], dim=0))
        weights = None if self.channel_weights is None else self.channel_weights.split(_TAP_CHANNELS)
        total = torch.zeros(batch, device=target.device)
        for i, features in enumerate(taps):
            squared = (features[:batch] - features[batch:]).square()
            if weights is not None:
                squared = squared * weights[i].view(1, -1, 1, 1)
            total = total + squared.sum(dim=1).mean(dim=(1, 2))
        return total

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss: :meth:`distance` averaged over the batch."""
        return self.distance(reconstruction, target).mean()


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (the largest divisor of ``channels`` among 1, 2, 4, ..., 32)."""
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017), with GroupNorm instead of BatchNorm.

    Layout: conv 4x4/2 + LeakyReLU(0.2); ``n_layers`` x [conv 4x4 (stride 2, the last stride 1) +
    GroupNorm + LeakyReLU(0.2)] with widths doubling up to 8 x ``channels``; conv 4x4/1 to one logit
    per patch. All convs use padding 1. A 256 x 256 input with the defaults gives 30 x 30 logits, each
    seeing a 70 x 70 receptive field.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,  # channels of the images judged (3 for RGB)
        channels: int = 64,  # width of the first conv; later convs use up to 8x this
        n_layers: int = 3,  # normalised conv blocks after the first conv; more = larger patches
    ) -> None:
        """Build the network; convs are initialised from N(0, 0.02) as in pix2pix."""
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for block in range(1, n_layers + 1):
            next_width = channels * min(2**block, 8)
            stride = 1 if block == n_layers else 2
            layers += [
                nn.Conv2d(width, next_width, kernel_size=4, stride=stride, padding=1, bias=False),
                _group_norm(next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, kernel_size=4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for module in self.net:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map B x in_channels x H x W images in [-1, 1] to B x 1 x h x w real-vs-fake logits."""
        return self.net(images)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator: ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``.

    Args:
        logits_real: discriminator logits on real images, any shape (e.g. B x 1 x h x w).
        logits_fake: logits on reconstructions (detached from the generator), any shape.

    Returns:
        Scalar >= 0; 1 when all logits are 0, 0 once real >= 1 and fake <= -1 everywhere.
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss ``-mean(logits_fake)`` for logits of any shape (scalar, unbounded)."""
    return -logits_fake.mean()
