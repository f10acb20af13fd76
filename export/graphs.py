"""The two exportable graphs, built from a trained Tokenizer (needs torch).

    EncoderGraph  images N x 3 x H x W float32 RGB in [-1, 1]  ->  ids N x H/ds x W/ds int32 in [0, K)
    DecoderGraph  ids N x h x w int32                          ->  images N x 3 x h*ds x w*ds float32 in [-1, 1]

The nearest-code search lives in a submodule named ``quantizer`` so that every ONNX node of it is named
``/quantizer/...``: calibration keeps those nodes in FP32 and ``provq-export check`` verifies they carry no Q/DQ.
The search uses the training code's formula (||z||^2 - 2 z.e + ||e||^2, argmin over the last axis), with the codebook
axis last, as TensorRT's TopK needs, and emits int32 ids (TensorRT's native index type).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from provq.train.model import Tokenizer
from provq.train.stems import fold_haar_heads


class NearestCode(nn.Module):
    """z N x D x h x w float32 -> ids N x h x w int32: argmin_k ||z - e_k||^2 over a K x D codebook."""

    def __init__(self, codebook: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codebook_t", codebook.detach().float().t().contiguous())  # D x K
        self.register_buffer("codebook_sq", codebook.detach().float().pow(2).sum(1))  # K

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float().permute(0, 2, 3, 1)  # N x h x w x D
        distances = z.pow(2).sum(-1, keepdim=True) - 2.0 * (z @ self.codebook_t) + self.codebook_sq
        return distances.argmin(-1).to(torch.int32)


class CodeLookup(nn.Module):
    """ids N x h x w int32 -> codes N x D x h x w float32 (a Gather on the K x D codebook)."""

    def __init__(self, codebook: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codebook", codebook.detach().float().clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.codebook).permute(0, 3, 1, 2)


class EncoderGraph(nn.Module):
    """Frames to token ids; see the module docstring for layouts."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.encoder = tokenizer.encoder
        self.quant_proj = tokenizer.quant_proj
        self.quantizer = NearestCode(tokenizer.quantizer.codebook)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.quant_proj(self.encoder(images)))


class DecoderGraph(nn.Module):
    """Token ids to frames; see the module docstring for layouts."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.quantizer = CodeLookup(tokenizer.quantizer.codebook)
        self.post_quant_proj = tokenizer.post_quant_proj
        self.decoder = fold_haar_heads(tokenizer.decoder)  # a Haar head's inverse transform inside its Conv

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_proj(self.quantizer(ids))).clamp(-1.0, 1.0)
