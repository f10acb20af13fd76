"""Simulated INT8 inference of convolutions, for quantization-aware fine-tuning of the encoder.

Inside ``simulated_int8(convs)`` each listed Conv2d computes with its input rounded to symmetric per-tensor INT8
(scale = max |x| / 127 over the batch, as min-max calibration sets it) and its weights rounded to symmetric
per-output-channel INT8 (scale = max |w| / 127 per channel) - what ``provq-calibrate`` produces for ONNX Runtime and
TensorRT. Gradients pass straight through the rounding (``torch.fake_quantize_*``).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _fake_int8_input(x: torch.Tensor) -> torch.Tensor:
    scale = float(x.detach().abs().amax().clamp_min(1e-8)) / 127.0
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, -127, 127)


def _fake_int8_weight(w: torch.Tensor) -> torch.Tensor:
    scale = w.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127.0
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def _int8_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(
        _fake_int8_input(x), _fake_int8_weight(self.weight), self.bias, self.stride, self.padding, self.dilation,
        self.groups,
    )  # fmt: skip


@contextlib.contextmanager
def simulated_int8(convs: Iterable[nn.Conv2d]) -> Iterator[None]:
    """Run the given Conv2d modules with INT8-rounded inputs and weights until the block ends."""
    patched = list(convs)
    for conv in patched:
        conv.forward = types.MethodType(_int8_forward, conv)
    try:
        yield
    finally:
        for conv in patched:
            del conv.forward


def int8_consistency(model: nn.Module, x: torch.Tensor, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the simulated-INT8 and FP32 latents of a Tokenizer, in units of each code's half
    spacing (``--int8-weight``). Latents that move less than that under INT8 rounding keep their ids; quant_proj
    stays FP32, as in provq-calibrate's default."""
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    with simulated_int8(convs):
        z8 = model.quant_proj(model.encoder(x))
    half = half_code_spacing(model.quantizer.codebook)[ids.long()]  # B x h x w
    return ((z8.float() - z.float()).pow(2).sum(1) / half.pow(2)).mean()


def half_code_spacing(codebook: torch.Tensor) -> torch.Tensor:
    """K: half the distance from each code to its nearest other code (the radius of the ball inside its cell)."""
    gaps = torch.cdist(codebook.detach().float(), codebook.detach().float())
    gaps.fill_diagonal_(float("inf"))
    return 0.5 * gaps.min(1).values.clamp_min(1e-12)
