"""Names inside the exported ONNX graphs that other stages rely on.

    encoder   IMAGES (N x 3 x H x W float32 RGB in [-1, 1]) -> IDS (N x H/ds x W/ds int32)
    decoder   IDS -> IMAGES (N x 3 x H x W float32 RGB in [-1, 1])

Node scopes come from the PyTorch module names (``torch.onnx.export`` names nodes ``/<module>/<op>``):
QUANTIZER_SCOPE holds the nearest-code search (distance MatMul, ArgMin) and the codebook lookup: calibration never
quantizes it, ``provq-export check`` refuses Q/DQ on it, FP16 conversion keeps it FP32 and ``--stable-tokens`` taps
the tensor that enters it. QUANT_PROJ_SCOPE and POST_QUANT_PROJ_SCOPE are the projections into and out of the code
space, which FP16 conversion keeps FP32 too.
"""

from __future__ import annotations

IMAGES = "images"
IDS = "ids"
QUANTIZER_SCOPE = "/quantizer/"
QUANT_PROJ_SCOPE = "/quant_proj/"
POST_QUANT_PROJ_SCOPE = "/post_quant_proj/"
