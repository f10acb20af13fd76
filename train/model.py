"""The tokenizer: a fully convolutional encoder, a vector quantizer and a decoder on one object.

    images  B x 3 x H x W float in [-1, 1], H and W multiples of ``downsample``
    latents B x D x H/ds x W/ds float (continuous, after the 1x1 projection to the code dimension D)
    ids     B x H/ds x W/ds int32 in [0, K)

The decoder upsamples with nearest resize + 3x3 conv (no ConvTranspose: ONNX Runtime has no INT8 ConvTranspose).
The stem (ModelConfig.stem) reads the image at full resolution ("conv") or as p x p patches ("s2d", "haar"; see
stems.py), and the decoder's head mirrors it; ``shortcuts`` adds DC-AE's non-parametric paths around each down- and
upsampling Conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import stems
from .presets import ModelConfig
from .quantizer import VectorQuantizer


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels, eps=1e-6)
    raise ValueError(f"unknown norm {kind!r}: use 'none' or 'group'")


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x)))))), with a 1x1 skip on width change."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(norm, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)  # each block starts as the identity: stable without normalisation
        nn.init.zeros_(self.body[-1].bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _stem(cfg: ModelConfig) -> list[nn.Module]:
    """B x 3 x H x W -> B x widths[0] x H/p x W/p."""
    if cfg.stem == "s2d":
        return [nn.PixelUnshuffle(cfg.patch), nn.Conv2d(3 * cfg.patch**2, cfg.widths[0], 3, padding=1)]
    if cfg.stem == "haar":
        return [stems.HaarAnalysis(cfg.patch), nn.Conv2d(3 * cfg.patch**2, cfg.widths[0], 3, padding=1)]
    return [nn.Conv2d(3, cfg.widths[0], 3, padding=1)]


def _head(cfg: ModelConfig) -> list[nn.Module]:
    """B x widths[0] x h x w -> B x 3 x h*p x w*p: the decoder's last Conv writes the image (or its patches)."""
    if cfg.stem == "s2d":
        return [nn.Conv2d(cfg.widths[0], 3 * cfg.patch**2, 3, padding=1), nn.PixelShuffle(cfg.patch)]
    if cfg.stem == "haar":
        return [stems.HaarHead(cfg.widths[0], cfg.patch)]
    return [nn.Conv2d(cfg.widths[0], 3, 3, padding=1)]


def _strided_conv(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)


class Encoder(nn.Module):
    """B x 3 x H x W in [-1, 1] -> B x latent_channels x H/ds x W/ds."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.widths
        layers = _stem(cfg)
        for level, width in enumerate(widths):
            layers += [ResBlock(width, width, cfg.norm) for _ in range(cfg.res_blocks)]
            if level + 1 < len(widths):
                down = stems.Downsample if cfg.shortcuts else _strided_conv
                layers.append(down(width, widths[level + 1]))
        layers += [ResBlock(widths[-1], widths[-1], cfg.norm) for _ in range(cfg.mid_blocks)]
        layers += [
            _norm(cfg.norm, widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], cfg.latent_channels, 3, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """B x latent_channels x h x w -> B x 3 x h*ds x w*ds (unbounded; about [-1, 1] once trained)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.widths[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)]
        layers += [ResBlock(widths[0], widths[0], cfg.norm) for _ in range(cfg.mid_blocks)]
        for level, width in enumerate(widths):
            layers += [ResBlock(width, width, cfg.norm) for _ in range(cfg.res_blocks)]
            if level + 1 < len(widths):
                if cfg.shortcuts:
                    layers.append(stems.Upsample(width, widths[level + 1]))
                else:  # two entries, as the checkpoints written before the other stems have them
                    layers += [
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(width, widths[level + 1], 3, padding=1),
                    ]
        layers += [_norm(cfg.norm, widths[-1]), nn.SiLU(), *_head(cfg)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass
class TokenizerOutput:
    """One training forward pass.

    reconstruction: B x 3 x H x W float (not clamped), ids: B x h x w int32 or None during warm-up,
    latents: B x D x h x w continuous, codebook_loss / commitment_loss: unweighted scalars.
    """

    reconstruction: torch.Tensor
    ids: torch.Tensor | None
    latents: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class Tokenizer(nn.Module):
    """Encoder -> 1x1 projection -> vector quantizer -> 1x1 projection -> decoder.

    ``encode`` / ``decode`` / ``autoencode`` are the inference API (hard VQ, no gradients needed);
    ``forward`` is the training step with the ProVQ blend weight ``alpha``.
    """

    def __init__(
        self, cfg: ModelConfig, *, restart_dead_codes_every: int = 0, quantizer: nn.Module | None = None
    ) -> None:
        """``quantizer`` replaces the VectorQuantizer (the study's peers): same interface, cfg.code_dim channels."""
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_proj = nn.Conv2d(cfg.latent_channels, cfg.code_dim, 1)
        own = VectorQuantizer(
            codebook_size=cfg.codebook_size,
            dim=cfg.code_dim,
            restart_dead_codes_every=restart_dead_codes_every,
        )  # built even when replaced, so the decoder's initial weights do not depend on the quantizer
        self.quantizer = own if quantizer is None else quantizer
        self.post_quant_proj = nn.Conv2d(cfg.code_dim, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def _check_size(self, images: torch.Tensor) -> None:
        ds = self.downsample
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images B x 3 x H x W, got shape {tuple(images.shape)}")
        if images.shape[-2] % ds or images.shape[-1] % ds:
            raise ValueError(f"H and W must be multiples of {ds}, got {images.shape[-2]} x {images.shape[-1]}")

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latents: B x 3 x H x W in [-1, 1] -> B x D x H/ds x W/ds."""
        self._check_size(images)
        return self.quant_proj(self.encoder(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids: B x 3 x H x W float in [-1, 1] -> B x H/ds x W/ds int32 in [0, K)."""
        z = self.latents(images)
        return self.quantizer.nearest(z.permute(0, 2, 3, 1))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Images from ids: B x h x w integer in [0, K) -> B x 3 x h*ds x w*ds float clamped to [-1, 1]."""
        codes = self.quantizer.lookup(ids).permute(0, 3, 1, 2)  # B x D x h x w
        return self.decode_latents(codes).clamp(-1.0, 1.0)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoder from B x D x h x w latents or codes -> B x 3 x H x W (not clamped)."""
        return self.decoder(self.post_quant_proj(latents.to(self.post_quant_proj.weight.dtype)))

    def autoencode(self, images: torch.Tensor) -> torch.Tensor:
        """Round trip through the tokens: B x 3 x H x W in [-1, 1] -> same shape, clamped to [-1, 1]."""
        return self.decode(self.encode(images))

    def forward(self, images: torch.Tensor, alpha: float = 0.0) -> TokenizerOutput:
        """Training pass: B x 3 x H x W in [-1, 1]; alpha = 1 continuous (warm-up), 0 hard VQ."""
        z = self.latents(images)
        q = self.quantizer(z, alpha)
        return TokenizerOutput(
            reconstruction=self.decode_latents(q.decoder_input),
            ids=q.ids,
            latents=z,
            codebook_loss=q.codebook_loss,
            commitment_loss=q.commitment_loss,
        )
