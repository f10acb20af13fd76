"""Quantizers of lucidrains' vector-quantize-pytorch behind the interface of ``VectorQuantizer``, for the study.

    vqtorch  ``VectorQuantize``: an EMA codebook (decay 0.8) set by k-means on its first training batch, codes whose
             EMA cluster size falls below 2 moved onto latents of the batch, rotation-trick gradients
    fsq      ``FSQ``: finite scalar quantization on a fixed grid of ``levels`` (the FSQ paper's choice for the
             vocabulary size); no codebook to learn, no losses; the encoder projects straight to len(levels) dims

Both take B x D x h x w latents and give ids as B x h x w int32, exactly like ``provq.train.quantizer``, so the
same encoder and decoder train around them. The library is an optional dependency of the study only: it is
imported when a peer is built, and its absence is a one-line ``ProvqError``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import ModuleType

import torch
from torch import nn

from .errors import ProvqError
from .kmeans import squared_distances
from .presets import ModelConfig
from .quantizer import QuantizerOutput

PEERS = ("vqtorch", "fsq")
INSTALL_HINT = "pip install vector-quantize-pytorch (or pip install 'provq[study]')"

# The vqtorch method's settings of the library's VectorQuantize, beyond the codebook's size and dimension.
VQTORCH_SETTINGS: dict[str, float | bool] = {
    "kmeans_init": True,  # codebook set by k-means on the first training batch
    "decay": 0.8,  # EMA decay of the codebook (the library's default)
    "threshold_ema_dead_code": 2.0,  # codes whose EMA cluster size falls below this are restarted
    "rotation_trick": True,  # rotation-trick gradients through the quantizer
    "commitment_weight": 1.0,  # unweighted: the trainer weights the commitment loss by beta
}

# FSQ levels per vocabulary size, from Table 1 of Mentzer et al. 2023 (arXiv 2309.15505); prod(levels) ~ K.
FSQ_LEVELS: dict[int, tuple[int, ...]] = {
    256: (8, 6, 5),
    1024: (8, 5, 5, 5),
    4096: (7, 5, 5, 5, 5),
    16384: (8, 8, 8, 6, 5),
    65536: (8, 8, 8, 5, 5, 5),
}


def library() -> ModuleType:
    """The ``vector_quantize_pytorch`` module, or a one-line ProvqError saying how to install it."""
    try:
        import vector_quantize_pytorch
    except ImportError:
        raise ProvqError(f"the vqtorch and fsq methods need vector-quantize-pytorch: {INSTALL_HINT}") from None
    return vector_quantize_pytorch


def fsq_levels(codebook_size: int) -> tuple[int, ...]:
    """FSQ levels whose product is about ``codebook_size`` (a power of two the FSQ paper lists)."""
    try:
        return FSQ_LEVELS[codebook_size]
    except KeyError:
        sizes = ", ".join(str(k) for k in FSQ_LEVELS)
        raise ProvqError(f"no FSQ levels for a codebook of {codebook_size} codes: use one of {sizes}") from None


def _check_name(name: str) -> None:
    if name not in PEERS:
        raise ProvqError(f"unknown quantizer {name!r}: choose vq or one of {', '.join(PEERS)}")


def fit_model_config(name: str, cfg: ModelConfig) -> ModelConfig:
    """The model arguments a peer needs: FSQ fixes the code dimension and the vocabulary; vqtorch keeps ``cfg``."""
    _check_name(name)
    if name == "fsq":
        levels = fsq_levels(cfg.codebook_size)
        return replace(cfg, code_dim=len(levels), codebook_size=math.prod(levels))
    return cfg


def _to_sequence(z: torch.Tensor) -> torch.Tensor:
    """B x D x h x w -> B x (h w) x D float32 (the library's channel-last layout)."""
    return z.flatten(2).transpose(1, 2).float()


def _to_map(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B x (h w) x D -> B x D x h x w, the layout of ``like``."""
    b, d, h, w = like.shape
    return x.transpose(1, 2).reshape(b, d, h, w)


class VQTorchQuantizer(nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` with k-means init, EMA dead-code expiry and the rotation trick.

    The codebook learns by EMA, so ``codebook_loss`` is zero; ``commitment_loss`` is the library's unweighted
    ||z - sg(q)||^2, which the trainer weights by beta like every other method.
    """

    def __init__(self, *, codebook_size: int, dim: int) -> None:  # K codes (ids in [0, K)) of dimension D
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.vq = library().VectorQuantize(dim=dim, codebook_size=codebook_size, **VQTORCH_SETTINGS)
        # The library initialises its codebook itself (k-means on the first training batch): nothing for the trainer.
        self.register_buffer("initialized", torch.tensor(True))

    @property
    def codebook(self) -> torch.Tensor:
        """K x D float32 codes."""
        return self.vq.codebook

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-code ids: z is ... x D (any float dtype), returns ... int32 (argmin of L2, in float32)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            ids = squared_distances(flat, self.codebook).argmin(1).to(torch.int32)
        return ids.reshape(z.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes for ids: ids any shape (integer) -> ids.shape x D float32."""
        return self.vq.get_output_from_indices(ids.long())

    def forward(self, z: torch.Tensor, alpha: float = 0.0) -> QuantizerOutput:
        """Quantize B x D x h x w latents; the decoder gets lerp(q, z, alpha) (alpha = 0, hard, in eval mode).

        In training mode this also moves the codebook (EMA, k-means on the first call, dead-code expiry).
        """
        if not self.training:
            alpha = 0.0
        seq = _to_sequence(z)
        q, ids, _, parts = self.vq(seq, return_loss_breakdown=True)
        return QuantizerOutput(
            decoder_input=_to_map(torch.lerp(q, seq, alpha), z).to(z.dtype),
            ids=ids.reshape(z.shape[0], *z.shape[2:]).to(torch.int32),
            codebook_loss=z.new_zeros((), dtype=torch.float32),
            commitment_loss=parts.commitment,
        )


class FSQQuantizer(nn.Module):
    """vector-quantize-pytorch's ``FSQ``: each of len(levels) channels bounded and rounded to ``levels[i]`` values.

    Needs latents of exactly len(levels) channels (see :func:`fit_model_config`): no projections inside, so the
    decoder gets the grid points themselves. Ids come from the bounded (tanh) latents, so ``nearest`` of a grid point
    is not always its own id; ``fsq.codes_to_indices`` inverts ``lookup`` exactly.
    """

    def __init__(self, *, levels: tuple[int, ...]) -> None:  # levels: values per channel; K = prod(levels)
        super().__init__()
        self.fsq = library().FSQ(levels=list(levels))
        self.codebook_size = int(self.fsq.codebook_size)
        self.dim = len(levels)
        self.register_buffer("initialized", torch.tensor(True))  # the grid is fixed: always ready

    @property
    def codebook(self) -> torch.Tensor:
        """K x D float32 grid points, in [-1, 1]."""
        return self.fsq.implicit_codebook

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Grid-cell ids: z is ... x D (any float dtype), returns ... int32 in [0, K)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            _, ids = self.fsq(z.reshape(1, -1, self.dim).float())
        return ids.reshape(z.shape[:-1]).to(torch.int32)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Grid points for ids: ids any shape (integer) -> ids.shape x D float32."""
        return self.fsq.indices_to_codes(ids.reshape(-1).long()).reshape(*ids.shape, self.dim)

    def forward(self, z: torch.Tensor, alpha: float = 0.0) -> QuantizerOutput:
        """Quantize B x D x h x w latents (straight-through rounding); the decoder gets lerp(q, z, alpha)."""
        if not self.training:
            alpha = 0.0
        seq = _to_sequence(z)
        q, ids = self.fsq(seq)
        zero = z.new_zeros((), dtype=torch.float32)
        return QuantizerOutput(
            decoder_input=_to_map(torch.lerp(q, seq, alpha), z).to(z.dtype),
            ids=ids.reshape(z.shape[0], *z.shape[2:]).to(torch.int32),
            codebook_loss=zero,
            commitment_loss=zero,
        )


def build(name: str, cfg: ModelConfig) -> nn.Module:
    """The peer quantizer ``name`` for a model whose arguments came from :func:`fit_model_config`.

    Building it leaves the global RNG untouched, so the encoder and decoder start from the same weights as with
    provq's own quantizer for the same seed.
    """
    _check_name(name)
    with torch.random.fork_rng(devices=[]):
        if name == "vqtorch":
            return VQTorchQuantizer(codebook_size=cfg.codebook_size, dim=cfg.code_dim)
        return FSQQuantizer(levels=_levels_of(cfg))


def _levels_of(cfg: ModelConfig) -> tuple[int, ...]:
    """FSQ levels of a fitted config (its code dimension is len(levels), its codebook size prod(levels))."""
    for levels in FSQ_LEVELS.values():
        if len(levels) == cfg.code_dim and math.prod(levels) == cfg.codebook_size:
            return levels
    raise ProvqError(f"model arguments (code_dim {cfg.code_dim}, {cfg.codebook_size} codes) do not fit FSQ levels")
