"""Vector quantizer with the ProVQ blend, nearest-code search in float32 and optional dead-code restarts.

Nearest code:  id = argmin_k ||z - e_k||^2 = argmin_k (||z||^2 - 2 z.e_k + ||e_k||^2), one matmul + argmin,
computed in float32 even under autocast, returned as int32 (TensorRT's native index type).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .kmeans import kmeans


class _BlendStraightThrough(torch.autograd.Function):
    """Forward ``alpha * z + (1 - alpha) * q`` exactly at both ends; backward the identity to ``z``.

    This is z~ = alpha * z + (1 - alpha) * (z + sg(q - z)): its value interpolates z and q, and its gradient
    with respect to z is alpha * I + (1 - alpha) * I = I (the straight-through estimator). ``torch.lerp`` is exact
    at weight 0 and 1, so alpha = 1 gives z bit for bit and alpha = 0 gives q bit for bit.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.lerp(q, z, alpha)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def blend_straight_through(z: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """The ProVQ decoder input z~ for latents ``z`` and their codes ``q`` (same shape); see the class above."""
    return _BlendStraightThrough.apply(z, q.detach().to(z.dtype), float(alpha))


def code_depth(z: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """How deep each latent sits inside its code's cell: N x D latents, K x D codebook, N ids -> N (float32).

    depth = 1 - ||z - e_i|| / h_i, where h_i is half the distance from e_i to its nearest other code. The ball of
    radius h_i around e_i lies inside e_i's Voronoi cell, so a latent of depth d is at least d * h_i away from every
    boundary: any perturbation smaller than that (INT8 rounding, a re-encoded frame) keeps its id. 1 at the code,
    0 on the ball's surface, negative beyond it. Unlike a margin measured to the boundary, it cannot be raised by
    pushing latents far out of the codebook's hull.
    """
    z, codebook = z.float(), codebook.float()
    gaps = torch.cdist(codebook, codebook)
    gaps.fill_diagonal_(float("inf"))
    half = 0.5 * gaps.min(1).values.clamp_min(1e-12)  # K
    own = codebook[ids.long()]
    return 1.0 - (z - own).norm(dim=1) / half[ids.long()]


def margin_loss(z: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor, target: float) -> torch.Tensor:
    """Mean of relu(target - code_depth): pulls latents (not codes) at least ``target`` deep into their cells."""
    return F.relu(target - code_depth(z, codebook.detach(), ids)).mean()


@dataclass
class QuantizerOutput:
    """What one quantizer forward pass gives.

    decoder_input: B x D x h x w, the blend z~ (float)
    ids: B x h x w int32 code ids, or None during the continuous warm-up
    codebook_loss: ||sg(z) - q||^2 (scalar), commitment_loss: ||z - sg(q)||^2 (scalar), unweighted
    """

    decoder_input: torch.Tensor
    ids: torch.Tensor | None
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """A learned codebook of ``codebook_size`` vectors of dimension ``dim``, trained by its codebook loss."""

    def __init__(
        self,
        *,
        codebook_size: int,  # K: ids are in [0, K)
        dim: int,  # D: dimension of each code (the encoder projects to it)
        restart_dead_codes_every: int = 0,  # replace codes unused for this many training steps; 0 = never
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.restart_dead_codes_every = restart_dead_codes_every
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        )
        # False until the codebook is set from data (k-means) or declared ready (the hard baseline's random init).
        self.register_buffer("initialized", torch.tensor(False))
        # Uses of each code since the last dead-code check (training only).
        self.register_buffer("recent_counts", torch.zeros(codebook_size, dtype=torch.long))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-code ids: z is ... x D (any float dtype), returns ... int32 (argmin of L2, in float32)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            codebook = self.codebook.float()
            distances = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codebook.t() + codebook.pow(2).sum(1)
            ids = distances.argmin(1).to(torch.int32)
        return ids.reshape(z.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes for ids: ids any shape (integer) -> ids.shape x D float32."""
        return F.embedding(ids.long(), self.codebook)

    def forward(self, z: torch.Tensor, alpha: float = 0.0) -> QuantizerOutput:
        """Quantize B x D x h x w latents and blend: alpha = 1 continuous, 0 hard (always 0 in eval mode).

        While the codebook is not initialised and alpha == 1 (the warm-up), no search runs and ids is None.
        """
        if not self.training:
            alpha = 0.0
        if alpha >= 1.0 and not bool(self.initialized):
            zero = z.new_zeros(())
            return QuantizerOutput(decoder_input=z, ids=None, codebook_loss=zero, commitment_loss=zero)
        z_last = z.permute(0, 2, 3, 1)  # B x h x w x D
        ids = self.nearest(z_last)
        q = self.lookup(ids)  # B x h x w x D, float32, differentiable w.r.t. the codebook
        codebook_loss = F.mse_loss(q, z_last.detach().float())
        commitment_loss = F.mse_loss(z_last.float(), q.detach())
        blended = blend_straight_through(z_last, q, alpha)
        if self.training and self.restart_dead_codes_every:
            self.recent_counts += torch.bincount(ids.flatten().long(), minlength=self.codebook_size)
        return QuantizerOutput(
            decoder_input=blended.permute(0, 3, 1, 2),
            ids=ids,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
        )

    @torch.no_grad()
    def init_from_latents(self, latents: torch.Tensor, *, seed: int = 0, iters: int = 20) -> None:
        """Set the codebook to k-means centroids of N x D latents gathered from every rank.

        Rank 0 clusters and broadcasts, so all ranks end with the same codebook.
        """
        gathered = distributed.all_gather_rows(latents.float())
        if distributed.is_distributed() and torch.distributed.get_rank() != 0:
            centroids = torch.empty_like(self.codebook)
        else:
            centroids = kmeans(gathered, self.codebook_size, iters=iters, seed=seed).to(self.codebook.dtype)
        distributed.broadcast_(centroids)
        self.codebook.copy_(centroids)
        self.initialized.fill_(True)
        self.recent_counts.zero_()

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor, *, generator: torch.Generator) -> int:
        """Move every code unused since the last call onto a random latent of N x D ``latents``.

        Counts are summed and latents gathered over ranks; rank 0 decides and broadcasts. Returns how many codes
        were restarted.
        """
        counts = distributed.all_reduce_sum_(self.recent_counts.clone())
        candidates = distributed.all_gather_rows(latents.float())
        dead = (counts == 0).nonzero().squeeze(1)
        codebook = self.codebook.detach().clone()
        if dead.numel():
            picks = torch.randint(candidates.shape[0], (dead.numel(),), generator=generator)
            codebook[dead] = candidates[picks.to(candidates.device)].to(codebook.dtype)
        distributed.broadcast_(codebook)
        self.codebook.copy_(codebook)
        self.recent_counts.zero_()
        return int(dead.numel())
