"""Stable tokens (``provq-run --stable-tokens M``): hysteresis on the nearest-code search, lossy and opt-in.

On a static camera, cells whose latent lies near the boundary between two codes flip with sensor noise. With a
margin ``M >= 0`` a cell keeps the previous frame's id while that code stays within a relative distance margin of
the nearest one, ``||z - e_prev|| <= (1 + M) ||z - e_nearest||``, and takes the nearest id otherwise; every cell is
refreshed (takes its nearest id) at each keyframe, so a chunk never drifts from what the encoder saw.

The encoder graphs output ids only; the latents z are the graph's own input to the nearest-code search (the one
non-constant tensor that enters the ``/quantizer/`` nodes from outside, N x D x h x w float32), added as a second
output when the session is built (``with_latents_output``), so no re-export is needed. The K x D codebook is read
from the FP32 graph and checked against the manifest's ``codebook_sha256``.

    codebook = load_codebook(manifest)                  # K x D float32
    stable = StableTokens(codebook, margin=0.5)
    ids = stable.step(ids, latents, refresh=True)       # ids h x w int, latents D x h x w float32 -> h x w int32
"""

from __future__ import annotations

import numpy as np

from .errors import EdgeError
from .formats.graph import QUANTIZER_SCOPE
from .formats.manifest import CODEBOOK_FILE, codebook_sha256
from .manifest import Manifest

DEFAULT_MARGIN = 0.5  # what a bare --stable-tokens uses; measurements: docs/BENCHMARKS.md ("Choosing the margin")


def latents_tensor(model) -> str:  # model: onnx.ModelProto (onnx is imported by the caller)
    """Name of the tensor that feeds the nearest-code search (produced outside ``/quantizer/``, not a Constant)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found = set()
    for node in model.graph.node:
        if not node.name.startswith(QUANTIZER_SCOPE):
            continue
        for name in node.input:
            src = producers.get(name)
            if src is not None and not src.name.startswith(QUANTIZER_SCOPE) and src.op_type != "Constant":
                found.add(name)
    if len(found) != 1:
        raise EdgeError(
            f"the encoder graph has {len(found)} candidate latent tensors feeding {QUANTIZER_SCOPE} (expected 1): "
            "--stable-tokens needs a graph exported by provq-export"
        )
    return found.pop()


def with_latents_output(path) -> tuple[bytes, str]:
    """The encoder ONNX file at ``path`` with its latents added as a second graph output: (model bytes, name)."""
    import onnx

    model = onnx.load(str(path))
    name = latents_tensor(model)
    if name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), name


def load_codebook(manifest: Manifest) -> np.ndarray:
    """The K x D float32 codebook, verified against ``manifest.codebook_sha256``: from the model directory's
    ``codebook.f32`` (numpy only), or in a directory exported before it was written, from the FP32 encoder graph
    (needs the onnx package)."""
    shape = (manifest.codebook_size, manifest.code_dim)
    raw = manifest.directory / CODEBOOK_FILE
    if raw.is_file():
        codebook = np.fromfile(raw, dtype="<f4")
        if codebook.size == shape[0] * shape[1] and codebook_sha256(codebook) == manifest.codebook_sha256:
            return codebook.reshape(shape)
        raise EdgeError(f"{raw} is not the codebook the manifest's codebook_sha256 names: re-run provq-export")
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise EdgeError(
            f"{manifest.directory} has no {CODEBOOK_FILE} and the onnx package to read the codebook from the graph "
            "is not installed: pip install onnx, or export the model again with this provq (it writes the file)"
        ) from None
    path = manifest.path("fp32", "encoder")
    for init in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(init)
        for candidate in (array, array.T) if array.ndim == 2 else ():
            codebook = np.ascontiguousarray(candidate, dtype="<f4")
            if codebook.shape == shape and codebook_sha256(codebook) == manifest.codebook_sha256:
                return codebook
    raise EdgeError(f"{path} holds no codebook matching the manifest's codebook_sha256: re-run provq-export")


class StableTokens:
    """Per-cell hysteresis over one stream of frames; see the module docstring."""

    def __init__(self, codebook: np.ndarray, margin: float) -> None:
        if not np.isfinite(margin) or margin < 0:
            raise EdgeError(f"--stable-tokens margin must be a number >= 0, got {margin}")
        self.codebook = np.asarray(codebook, dtype=np.float32)  # K x D
        self.limit = (1.0 + float(margin)) ** 2  # compared on squared distances
        self.prev: np.ndarray | None = None  # h x w int32, the ids last returned
        self.kept = 0  # cells of the last frame that kept their previous id against the nearest one

    def step(self, ids: np.ndarray, latents: np.ndarray, refresh: bool) -> np.ndarray:
        """ids h x w (the nearest codes), latents D x h x w -> the ids to send, h x w int32."""
        ids = np.asarray(ids, dtype=np.int32)
        if refresh or self.prev is None or self.prev.shape != ids.shape:
            self.prev, self.kept = ids, 0
            return ids
        z = np.moveaxis(np.asarray(latents, dtype=np.float32), 0, -1)  # h x w x D
        near = ((z - self.codebook[ids]) ** 2).sum(-1)
        held = ((z - self.codebook[self.prev]) ** 2).sum(-1)
        keep = (held <= self.limit * near) & (ids != self.prev)
        out = np.where(keep, self.prev, ids)
        self.prev, self.kept = out, int(keep.sum())
        return out
