"""Which Convs INT8 keeps in FP32, and why: one rule for post-training calibration (provq-calibrate, on ONNX node
names) and quantization-aware training (provq-train --qat, on PyTorch module names).

The rule reads each part's Convs in execution order (the order of the exported graph's Conv nodes), so it holds for
either naming. Measured in docs/INT8.md:
    encoder  the last Conv (``quant_proj``: the projection to the code space, right before the nearest-code search)
             and, with a Haar stem, the first two (the fixed Haar analysis and the learned Conv that reads its bands)
    decoder  the first Conv (``post_quant_proj``: from the codebook vectors) and the last one (writes the image)
The nearest-code search and the codebook lookup (``formats.graph.QUANTIZER_SCOPE``) hold no Conv and are never
quantized.
"""

from __future__ import annotations

from .graph import QUANTIZER_SCOPE

QUANT_PROJ_WHY = "projects to the code space right before the nearest-code search; its rounding flips ids"
POST_QUANT_PROJ_WHY = (
    "reads the codebook vectors straight from the lookup; a 1x1 conv from 8 channels, cheap in FP32, so the codes "
    "enter the decoder exactly"
)
LAST_CONV_WHY = (
    "writes the output image: INT8 on its input cost 0.13 of the INT8 decoder's 0.23 dB on bikes.mp4 (docs/INT8.md); "
    "32 -> 3 channels, cheap in FP32"
)
HAAR_WHY = (
    "the Haar stem's analysis and the first learned Conv, which reads its bands: the low band carries local pixel "
    "sums (up to +-4), the detail bands values near 0, so one per-tensor INT8 scale wipes out the detail "
    "(docs/INT8.md); 7% of the encoder's MACs"
)
ALWAYS_FP32 = f"nearest-code search and codebook lookup ({QUANTIZER_SCOPE}*): never quantized, ids must not flip"


def keep_fp32(encoder_convs: list[str], decoder_convs: list[str], stem: str | None) -> dict[str, dict[str, str]]:
    """{part: {Conv name: why}} of the Convs that stay FP32, given each part's Conv names in execution order."""
    keep: dict[str, dict[str, str]] = {"encoder": {}, "decoder": {}}
    if stem == "haar":
        keep["encoder"].update(dict.fromkeys(encoder_convs[:2], HAAR_WHY))
    if encoder_convs:
        keep["encoder"][encoder_convs[-1]] = QUANT_PROJ_WHY
    if decoder_convs:
        keep["decoder"][decoder_convs[0]] = POST_QUANT_PROJ_WHY
        keep["decoder"][decoder_convs[-1]] = LAST_CONV_WHY
    return keep
