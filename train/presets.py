"""Model presets: the one place that says how big each tokenizer is.

tiny  2.8 M parameters, downsample 8, 1024 codes: CPUs and small Jetsons (64 GMAC per megapixel, encoder + decoder);
      the tiny-haar network, the best held-out PSNR per GMAC of the stems compared in docs/ARCHITECTURES.md

The stems compared, at the same tokens (downsample 8, 1024 codes of dimension 8):
tiny-conv       2.0 M, 162 GMAC/MP: full-resolution 3x3 conv stem and head (the tiny preset until 2026-12; the
                ModelConfig defaults, so checkpoints written before the stem fields existed rebuild it exactly)
tiny-s2d        2.2 M, 89 GMAC/MP: 2x2 space-to-depth stem (12 channels at H/2), conv + pixel-shuffle head
tiny-s2d-dcae   2.2 M, 89 GMAC/MP: tiny-s2d with DC-AE space-to-channel shortcuts around every resolution change
tiny-haar       2.8 M, 64 GMAC/MP: 2-level Haar wavelet stem (48 channels at H/4, Cosmos' patcher), inverse-Haar head
tiny-haar-dcae  2.8 M, 64 GMAC/MP: tiny-haar with DC-AE shortcuts
(stems.py has the layouts.)

small ~14 M parameters, downsample 8, 4096 codes: a workstation GPU
base  ~75 M parameters, downsample 16, 16384 codes of dimension 8 behind a 1x1 projection
      (the size of LlamaGen's VQ-16 tokenizer)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ProvqError

STEMS = ("conv", "s2d", "haar")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one tokenizer. Stored in every checkpoint, so a checkpoint rebuilds its own model."""

    widths: tuple[int, ...] = (32, 64, 96, 112)  # channels per resolution level; downsample = 2 ** (len - 1)
    res_blocks: int = 1  # residual blocks per level
    mid_blocks: int = 1  # residual blocks at the lowest resolution, in encoder and decoder each
    norm: str = "none"  # "none" or "group" (GroupNorm, 32 groups); none keeps small models INT8-friendly
    latent_channels: int = 112  # encoder output channels before the 1x1 projection to the code dimension
    code_dim: int = 8  # dimension of each codebook vector
    codebook_size: int = 1024  # K: number of codes; ids are int32 in [0, K)
    beta: float = 0.25  # commitment loss weight
    stem: str = "conv"  # "conv" (full-resolution 3x3 Conv stem and head), "s2d" or "haar"; see the module docstring
    patch: int = 1  # the stem's patch size p: 1 for "conv"; 2 or 4 for "s2d" and "haar" (widths[0] runs at H/p)
    shortcuts: bool = False  # DC-AE space-to-channel shortcuts around every down- and upsampling Conv

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ProvqError(f"unknown stem {self.stem!r}: choose one of {', '.join(STEMS)}")
        if (self.stem == "conv") != (self.patch == 1) or self.patch not in (1, 2, 4):
            raise ProvqError(f"stem {self.stem!r} with patch {self.patch}: use patch 1 for 'conv', 2 or 4 otherwise")
        if self.shortcuts and any((4 * a) % b for a, b in zip(self.widths, self.widths[1:], strict=False)):
            raise ProvqError(f"shortcuts need 4 x each width to be a multiple of the next, got {self.widths}")

    @property
    def downsample(self) -> int:
        """Spatial reduction: an H x W frame becomes an H/downsample x W/downsample grid of ids (patch x 2^levels)."""
        return self.patch * 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, ints, floats, str), so checkpoints load with weights_only=True."""
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a checkpoint from another program)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ProvqError(f"unknown model arguments {sorted(unknown)}: the checkpoint was not written by provq")
        values = dict(data)
        if "widths" in values:
            values["widths"] = tuple(int(w) for w in values["widths"])
        return cls(**values)


PRESETS: dict[str, ModelConfig] = {
    "tiny-conv": ModelConfig(),
    # Cheaper stems at the same tokens (downsample 8, 1024 codes of dimension 8); see the module docstring.
    "tiny-s2d": ModelConfig(widths=(48, 96, 128), latent_channels=128, stem="s2d", patch=2),
    "tiny-s2d-dcae": ModelConfig(widths=(48, 96, 128), latent_channels=128, stem="s2d", patch=2, shortcuts=True),
    "tiny-haar": ModelConfig(widths=(80, 160), latent_channels=160, stem="haar", patch=4),
    "tiny-haar-dcae": ModelConfig(widths=(80, 160), latent_channels=160, stem="haar", patch=4, shortcuts=True),
    "small": ModelConfig(
        widths=(64, 128, 128, 256),
        res_blocks=2,
        mid_blocks=2,
        norm="group",
        latent_channels=256,
        codebook_size=4096,
    ),
}
# base: small's blocks, norm and latents at downsample 16, with a deeper middle and 4 x the codes.
PRESETS["base"] = replace(PRESETS["small"], widths=(128, 128, 256, 256, 512), mid_blocks=4, codebook_size=16384)
PRESETS["tiny"] = PRESETS["tiny-haar"]  # the measured best of the comparison (docs/ARCHITECTURES.md)


def preset(name: str) -> ModelConfig:
    """The named preset, or a one-line error listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ProvqError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
