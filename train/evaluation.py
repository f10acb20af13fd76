"""Validation figures of a tokenizer and digests of its weights across data-parallel ranks.

evaluate(model, frames, size=256, device=cpu)  # frames: H x W x 3 RGB uint8 -> {psnr_db, ssim, ...}
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch

from . import distributed
from .data import center_crop, to_tensor
from .metrics import CodeUsage, psnr, ssim
from .model import Tokenizer


@torch.no_grad()
def evaluate(model: Tokenizer, frames: list[np.ndarray], *, size: int, device: torch.device) -> dict[str, float]:
    """Hard-VQ metrics on validation frames (centre crops): PSNR, SSIM, codebook usage, perplexity.

    ``psnr_continuous_db`` decodes the unquantized latents: the ceiling the codebook could reach.
    """
    was_training = model.training
    model.eval()
    usage = CodeUsage(model.config.codebook_size)
    scores: dict[str, list[float]] = {"psnr_db": [], "ssim": [], "psnr_continuous_db": []}
    crops = [center_crop(f, size, model.downsample) for f in frames]
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for c in crops:
        by_shape.setdefault(c.shape, []).append(c)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for group in by_shape.values():
        for start in range(0, len(group), 8):
            x = to_tensor(np.stack(group[start : start + 8])).to(device)
            with autocast:
                ids = model.encode(x)
                y = model.decode(ids).float()
                y_cont = model.decode_latents(model.latents(x)).float().clamp(-1, 1)
            usage.update(ids)
            scores["psnr_db"] += psnr(y, x).tolist()
            scores["ssim"] += ssim(y, x).tolist()
            scores["psnr_continuous_db"] += psnr(y_cont, x).tolist()
    model.train(was_training)
    result = {k: float(np.mean(v)) for k, v in scores.items()}
    result["codebook_usage"] = usage.usage()
    result["perplexity"] = usage.perplexity()
    return result


def _sha256(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def rank_digests(model: Tokenizer, ctx: distributed.DistContext) -> dict[str, list[str]]:
    """sha256 of the codebook and of all parameters on every rank: data-parallel ranks must agree bit for bit."""
    out: dict[str, list[str]] = {}
    for name, tensors in (("codebook", [model.quantizer.codebook]), ("model", list(model.parameters()))):
        mine = torch.tensor(list(bytes.fromhex(_sha256(tensors))), dtype=torch.float64, device=ctx.device)
        gathered = distributed.all_gather_rows(mine[None])
        out[name] = [bytes(int(v) for v in row.tolist()).hex() for row in gathered]
    return out
