"""Quantizer: nearest-code search, round trips, the ProVQ blend at its ends, straight-through gradients."""

from __future__ import annotations

import pytest
import torch

from provq.train.int8_sim import half_code_spacing, simulated_int8
from provq.train.model import Tokenizer
from provq.train.presets import PRESETS, ModelConfig
from provq.train.quantizer import VectorQuantizer, blend_straight_through, code_depth, margin_loss


def _trained_like(k: int, d: int, seed: int = 0) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(codebook_size=k, dim=d)
    with torch.no_grad():
        vq.codebook.normal_()
    vq.initialized.fill_(True)
    return vq


@pytest.mark.parametrize(("k", "d"), [(16, 2), (1024, 8), (4096, 16)])
def test_ids_codes_ids_round_trip(k: int, d: int) -> None:
    vq = _trained_like(k, d)
    ids = torch.randint(k, (3, 5, 7), dtype=torch.int32)
    codes = vq.lookup(ids)
    assert codes.shape == (3, 5, 7, d)
    again = vq.nearest(codes)
    assert again.dtype == torch.int32
    assert torch.equal(again, ids)


def test_nearest_matches_brute_force_distance() -> None:
    vq = _trained_like(64, 4)
    z = torch.randn(500, 4)
    expected = torch.cdist(z.double(), vq.codebook.detach().double()).argmin(1)
    assert torch.equal(vq.nearest(z).long(), expected)


def test_nearest_is_float32_under_bf16_autocast() -> None:
    vq = _trained_like(256, 8)
    z = torch.randn(2, 6, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = vq.nearest(z.bfloat16())
    assert torch.equal(ids, vq.nearest(z.bfloat16().float()))


@pytest.mark.parametrize("shape", [(2, 8, 4, 4), (1, 16, 3, 5)])
def test_blend_is_exactly_z_at_alpha_one_and_exactly_q_at_alpha_zero(shape: tuple[int, ...]) -> None:
    z = torch.randn(shape)
    q = torch.randn(shape)
    assert torch.equal(blend_straight_through(z, q, 1.0), z)
    assert torch.equal(blend_straight_through(z, q, 0.0), q)
    mid = blend_straight_through(z, q, 0.25)
    assert torch.allclose(mid, 0.25 * z + 0.75 * q, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_straight_through_gradient_is_identity(alpha: float) -> None:
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q = torch.randn(2, 4, 3, 3)
    weights = torch.randn(2, 4, 3, 3)
    (blend_straight_through(z, q, alpha) * weights).sum().backward()
    assert torch.equal(z.grad, weights)


def test_quantizer_forward_at_alpha_zero_gives_the_codes_of_its_ids() -> None:
    vq = _trained_like(128, 8).train()
    z = torch.randn(2, 8, 4, 4)
    out = vq(z, alpha=0.0)
    assert torch.equal(out.decoder_input, vq.lookup(out.ids).permute(0, 3, 1, 2))
    assert out.codebook_loss.item() > 0 and out.commitment_loss.item() > 0


def test_uninitialised_codebook_is_skipped_during_warm_up() -> None:
    vq = VectorQuantizer(codebook_size=32, dim=4).train()
    z = torch.randn(1, 4, 2, 2)
    out = vq(z, alpha=1.0)
    assert out.ids is None and torch.equal(out.decoder_input, z)


def test_straight_through_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    model = Tokenizer(ModelConfig(widths=(8, 16), latent_channels=16, code_dim=4, codebook_size=32)).train()
    model.quantizer.initialized.fill_(True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(x, alpha=0.0)
    torch.nn.functional.mse_loss(out.reconstruction, x).backward()  # reconstruction only: no commitment term
    first_conv = model.encoder.layers[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None  # the codebook learns only from its own loss


def test_codebook_learns_from_codebook_loss() -> None:
    vq = _trained_like(16, 4).train()
    out = vq(torch.randn(1, 4, 4, 4), alpha=0.0)
    out.codebook_loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_dead_codes_move_onto_latents() -> None:
    vq = VectorQuantizer(codebook_size=8, dim=2, restart_dead_codes_every=1).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0]] + [[100.0, 100.0]] * 7))
    vq.initialized.fill_(True)
    latents = torch.randn(1, 2, 4, 4) * 0.1
    vq(latents, alpha=0.0)  # every latent picks code 0: codes 1..7 are dead
    restarted = vq.restart_dead_codes(
        latents.permute(0, 2, 3, 1).reshape(-1, 2), generator=torch.Generator().manual_seed(0)
    )
    assert restarted == 7
    assert vq.codebook.detach().abs().max() < 1.0  # all codes now sit among the latents


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_encode_decode_shapes(name: str) -> None:
    cfg = PRESETS[name]
    model = Tokenizer(cfg).eval()
    ds = cfg.downsample
    x = torch.rand(1, 3, 2 * ds, 3 * ds) * 2 - 1
    with torch.no_grad():
        ids = model.encode(x)
        y = model.decode(ids)
    assert ids.shape == (1, 2, 3) and ids.dtype == torch.int32
    assert int(ids.min()) >= 0 and int(ids.max()) < cfg.codebook_size
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    assert torch.equal(model.autoencode(x), y)


def test_tiny_presets_sizes() -> None:
    n = sum(p.numel() for p in Tokenizer(PRESETS["tiny"]).parameters())
    assert 2.5e6 < n < 3.1e6 and PRESETS["tiny"].stem == "haar"
    assert sum(p.numel() for p in Tokenizer(PRESETS["tiny-conv"]).parameters()) == 2_000_267
    assert PRESETS["tiny"].downsample == 8 and PRESETS["tiny"].codebook_size == 1024
    assert PRESETS["base"].codebook_size == 16384 and PRESETS["base"].code_dim <= 16


def test_decoder_has_no_transposed_convolution() -> None:
    model = Tokenizer(PRESETS["tiny"])
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())


def test_code_depth_is_one_at_the_code_and_guarantees_the_id_within_its_margin() -> None:
    torch.manual_seed(0)
    codebook = torch.randn(64, 4)
    ids = torch.arange(64)
    assert torch.allclose(code_depth(codebook, codebook, ids), torch.ones(64))
    half = half_code_spacing(codebook)
    z = codebook + 0.3 * half[:, None] * torch.nn.functional.normalize(torch.randn(64, 4), dim=1)
    depth = code_depth(z, codebook, ids)
    assert torch.allclose(depth, torch.full((64,), 0.7), atol=1e-5)
    # any perturbation shorter than depth * h keeps the nearest code
    quantizer = VectorQuantizer(codebook_size=64, dim=4)
    quantizer.codebook.data.copy_(codebook)
    kick = 0.99 * (depth * half)[:, None] * torch.nn.functional.normalize(torch.randn(64, 4), dim=1)
    assert torch.equal(quantizer.nearest(z + kick).long(), ids)


def test_margin_loss_moves_latents_not_codes() -> None:
    codebook = torch.nn.Parameter(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    z = torch.tensor([[0.45, 0.0]], requires_grad=True)
    loss = margin_loss(z, codebook, torch.tensor([0]), target=0.5)
    loss.backward()
    assert loss.item() > 0 and z.grad[0, 0] > 0 and codebook.grad is None  # pushed back towards code 0


def test_simulated_int8_rounds_inputs_and_weights_then_restores_the_module() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    exact = conv(x)
    with simulated_int8([conv]):
        rounded = conv(x)
    error = (rounded - exact).abs().max().item()
    assert 0 < error < 0.05 * exact.abs().max().item()
    assert torch.equal(conv(x), exact) and "forward" not in vars(conv)
