"""The size of a ``.ptok`` stream against the raw packed size of its frames."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .reader import TokenStreamReader


@dataclass(frozen=True)
class StreamStats:
    """Sizes of a stream against the raw packed size of its frames."""

    total_bytes: int  # the whole file
    header_bytes: int
    chunks: int
    frames: int
    keyframes: int
    gaps: int
    raw_bits_per_frame: int  # h * w * ceil(log2 K)

    @property
    def bytes_per_frame(self) -> float:
        """File bytes (header included) per frame."""
        return self.total_bytes / self.frames if self.frames else math.nan

    @property
    def ratio(self) -> float:
        """File bits per frame over raw bits per frame (below 1: delta coding and compression paid off)."""
        return self.bytes_per_frame * 8 / self.raw_bits_per_frame


def stream_stats(
    path: str | Path, *, expect_codebook_sha256: str | None = None, codebook: np.ndarray | None = None
) -> StreamStats:
    """Read a whole stream (raising EdgeError on damage) and measure it; ``codebook`` as TokenStreamReader's."""
    with TokenStreamReader(path, expect_codebook_sha256=expect_codebook_sha256, codebook=codebook) as reader:
        for _ in reader:
            pass
        reader.report.check()
        r = reader.report
        return StreamStats(reader._size, reader.data_offset, r.chunks, r.frames, r.keyframes, r.gaps,
                           reader.header.raw_bits_per_frame)  # fmt: skip
