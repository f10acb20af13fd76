"""Tests for provq.train.losses: pixel losses, VGG16/LPIPS perceptual loss, PatchGAN and hinge losses."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data, filters, transform
from torch import nn

from provq.train.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    reconstruction_loss,
)

# torchvision VGG16 ``features`` convs: index -> (out_channels, in_channels). Written out independently
# of provq so that the key format of real torchvision checkpoints is what is tested.
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64),
    5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
POOL_BEFORE = {5, 10, 17, 24}  # a 2x2 max pool precedes these convs
TAPPED_CONVS = (2, 7, 14, 21, 28)  # their ReLUs are relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def _random_vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-initialised torchvision-format VGG16 state dict, plus an unrelated classifier key."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out_ch, in_ch) in VGG16_CONVS.items():
        std = (2.0 / (9 * in_ch)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * std
        state[f"features.{index}.bias"] = torch.randn(out_ch, generator=generator) * 0.01
    state["classifier.0.weight"] = torch.zeros(4, 4)
    return state


def _reference_distance(
    state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, lin: dict[str, torch.Tensor] | None
) -> torch.Tensor:
    """LPIPS-style distance computed functionally from the raw state dict, the way the lpips package does."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def tapped(images: torch.Tensor) -> list[torch.Tensor]:
        h = ((images + 1) / 2 - mean) / std
        taps = []
        for index in VGG16_CONVS:
            if index in POOL_BEFORE:
                h = F.max_pool2d(h, 2)
            h = F.relu(F.conv2d(h, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
            if index in TAPPED_CONVS:
                taps.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return taps

    total = torch.zeros(x.shape[0])
    for layer, (fx, fy) in enumerate(zip(tapped(x), tapped(y), strict=True)):
        diff = (fx - fy).square()
        per_channel = diff.sum(1, keepdim=True) if lin is None else F.conv2d(diff, lin[f"lin{layer}.model.1.weight"])
        total += per_channel.mean(dim=(1, 2, 3))
    return total


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    return _random_vgg_state()


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory, vgg_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(vgg_state, path)
    return path


@pytest.fixture(scope="module")
def perceptual(vgg_file: Path) -> PerceptualLoss:
    return PerceptualLoss(vgg_file)


@pytest.fixture(scope="module")
def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2 x 3 x 32 x 32 batches in [-1, 1]: astronaut crops and a noisy copy."""
    image = torch.from_numpy(transform.resize(data.astronaut(), (64, 64), anti_aliasing=True)).float()
    crops = torch.stack([image[:32, :32], image[32:, 32:]]).permute(0, 3, 1, 2) * 2 - 1
    noisy = (crops + 0.2 * torch.randn(crops.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    return noisy, crops


def test_reconstruction_loss_values() -> None:
    target = torch.zeros(1, 1, 1, 2)
    reconstruction = torch.tensor([[[[0.5, -1.0]]]])
    assert reconstruction_loss(reconstruction, target, "l1").item() == pytest.approx(0.75)
    assert reconstruction_loss(reconstruction, target, "l2").item() == pytest.approx(0.625)
    assert reconstruction_loss(reconstruction, target, "l1+l2").item() == pytest.approx(1.375)


def test_reconstruction_loss_rejects_unknown_kind_and_shape_mismatch() -> None:
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"'l1', 'l2', 'l1\+l2'"):
        reconstruction_loss(x, x, "huber")
    with pytest.raises(ValueError, match="shape mismatch"):
        reconstruction_loss(x, torch.zeros(1, 3, 4, 5), "l1")


def test_perceptual_zero_for_identical_and_matches_reference(
    perceptual: PerceptualLoss,
    vgg_state: dict[str, torch.Tensor],
    image_pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    noisy, clean = image_pair
    assert perceptual(clean, clean).item() == 0.0
    distance = perceptual.distance(noisy, clean)
    assert distance.shape == (2,)
    assert bool((distance > 0).all())
    torch.testing.assert_close(distance, _reference_distance(vgg_state, noisy, clean, None), rtol=1e-4, atol=1e-6)
    assert perceptual(noisy, clean).item() == pytest.approx(distance.mean().item())


def test_perceptual_is_frozen_but_passes_gradients(
    perceptual: PerceptualLoss, image_pair: tuple[torch.Tensor, torch.Tensor]
) -> None:
    noisy, clean = image_pair
    assert all(not p.requires_grad for p in perceptual.parameters())
    perceptual.train()
    assert not perceptual.training
    assert not any(module.training for module in perceptual.modules())
    reconstruction = noisy.clone().requires_grad_(True)
    perceptual(reconstruction, clean).backward()
    assert reconstruction.grad is not None
    assert torch.isfinite(reconstruction.grad).all()
    assert reconstruction.grad.abs().sum().item() > 0
    assert all(p.grad is None for p in perceptual.parameters())


def test_perceptual_with_lpips_weights(
    tmp_path: Path,
    vgg_file: Path,
    vgg_state: dict[str, torch.Tensor],
    image_pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    noisy, clean = image_pair
    generator = torch.Generator().manual_seed(2)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for i, c in enumerate(LPIPS_CHANNELS)}
    lin_file = tmp_path / "vgg.pth"
    torch.save(lin, lin_file)
    weighted = PerceptualLoss(vgg_file, lpips_weights=lin_file).distance(noisy, clean)
    torch.testing.assert_close(weighted, _reference_distance(vgg_state, noisy, clean, lin), rtol=1e-4, atol=1e-6)
    # Unit channel weights reduce LPIPS to the plain channel sum.
    torch.save({key: torch.ones_like(value) for key, value in lin.items()}, lin_file)
    unit = PerceptualLoss(vgg_file, lpips_weights=lin_file).distance(noisy, clean)
    torch.testing.assert_close(unit, PerceptualLoss(vgg_file).distance(noisy, clean))


def _assert_one_line_value_error(build: Callable[[], object], *fragments: str) -> None:
    """Call ``build()`` and check it raises a single-line ValueError containing every fragment."""
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_perceptual_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.pth"
    _assert_one_line_value_error(lambda: PerceptualLoss(path), str(path), "not found", "torchvision VGG16")


def test_perceptual_missing_key(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in vgg_state.items() if k != "features.28.bias"}, path)
    _assert_one_line_value_error(lambda: PerceptualLoss(path), str(path), "missing key 'features.28.bias'")


def test_perceptual_wrong_shape(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "misshaped.pth"
    torch.save({**vgg_state, "features.0.weight": torch.zeros(64, 3, 5, 5)}, path)
    _assert_one_line_value_error(
        lambda: PerceptualLoss(path),
        str(path),
        "'features.0.weight' has shape (64, 3, 5, 5), needs (64, 3, 3, 3)",
    )


def test_lpips_file_missing_key(tmp_path: Path, vgg_file: Path) -> None:
    path = tmp_path / "lin.pth"
    torch.save({f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS[:4])}, path)
    _assert_one_line_value_error(
        lambda: PerceptualLoss(vgg_file, lpips_weights=path), str(path), "'lin4.model.1.weight'", "lpips"
    )


class _Payload:
    """A pickled object whose unpickling would run ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_perceptual_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "payload.pth"
    torch.save(_Payload(marker), path)
    _assert_one_line_value_error(
        lambda: PerceptualLoss(path), str(path), "refused by weights-only loading", "torchvision VGG16"
    )
    assert not marker.exists()


def test_perceptual_refuses_garbage_empty_and_non_dict(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    _assert_one_line_value_error(lambda: PerceptualLoss(garbage), str(garbage), "refused by weights-only")
    empty = tmp_path / "empty.pth"
    empty.touch()
    _assert_one_line_value_error(lambda: PerceptualLoss(empty), str(empty), "cannot be read (EOFError")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    _assert_one_line_value_error(lambda: PerceptualLoss(listed), str(listed), "holds a list")


def test_patch_discriminator_shapes_and_norms() -> None:
    discriminator = PatchDiscriminator()
    assert discriminator(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert discriminator(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 30 x 30 patches
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in discriminator.modules()) == 3
    shallow = PatchDiscriminator(in_channels=1, channels=8, n_layers=2)
    assert shallow(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 14, 14)
    with pytest.raises(TypeError):
        PatchDiscriminator(3)  # type: ignore[misc]


def _patches(image: np.ndarray, corners: np.ndarray, size: int) -> torch.Tensor:
    """Crop size x size patches at ``corners`` from H x W x 3 [0, 1] -> N x 3 x size x size in [-1, 1]."""
    crops = np.stack([image[r : r + size, c : c + size] for r, c in corners])
    return torch.from_numpy(crops).float().permute(0, 3, 1, 2) * 2 - 1


def test_discriminator_learns_real_vs_blurred() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = transform.resize(data.astronaut(), (192, 192), anti_aliasing=True)
    blurred = filters.gaussian(image, sigma=1.5, channel_axis=-1)
    # Training patches start in rows 0..103 (so end by row 135), held-out patches in rows 136..159.
    held_out = np.stack([rng.integers(136, 160, 16), rng.integers(0, 160, 16)], axis=1)
    held_out_real, held_out_fake = _patches(image, held_out, 32), _patches(blurred, held_out, 32)
    discriminator = PatchDiscriminator(channels=8)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def held_out_logits() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return discriminator(held_out_real), discriminator(held_out_fake)

    before = hinge_discriminator_loss(*held_out_logits()).item()
    for _ in range(80):
        corners = np.stack([rng.integers(0, 104, 16), rng.integers(0, 160, 16)], axis=1)
        real, fake = _patches(image, corners, 32), _patches(blurred, corners, 32)
        optimizer.zero_grad()
        hinge_discriminator_loss(discriminator(real), discriminator(fake)).backward()
        optimizer.step()
    real_logits, fake_logits = held_out_logits()
    assert hinge_discriminator_loss(real_logits, fake_logits).item() < 0.7 * before
    assert real_logits.mean().item() > fake_logits.mean().item() + 0.5


def test_hinge_and_generator_losses() -> None:
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    # 0.5 * (mean(relu(1 - [0.5, 3])) + mean(relu(1 + [0, -3]))) = 0.5 * (0.25 + 0.5)
    real, fake = torch.tensor([0.5, 3.0]), torch.tensor([0.0, -3.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.375)
    assert generator_adversarial_loss(torch.tensor([[1.0], [3.0]])).item() == pytest.approx(-2.0)


def test_perceptual_rejects_images_below_16_pixels(perceptual: PerceptualLoss) -> None:
    with pytest.raises(ValueError, match="16"):
        perceptual(torch.zeros(1, 3, 15, 32), torch.zeros(1, 3, 15, 32))
