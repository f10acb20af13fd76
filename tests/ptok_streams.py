"""Helpers of the .ptok tests: headers, scenes of ids, writing and reading streams, the byte offsets of docs/PTOK.md.

``make_header(codec="ctx-v3")`` gives a version 3 header whose fingerprint is that of a random codebook made for K
(``codebook_for``); ``write`` and ``read`` pass that codebook whenever a header needs it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from provq.edge_runtime import ctxcoder, tokenstream
from provq.edge_runtime.formats.manifest import codebook_sha256
from provq.edge_runtime.tokenstream import Frame, Gap, StreamHeader, TokenStreamReader, TokenStreamWriter

ROOT = Path(__file__).resolve().parents[1]
SHA = hashlib.sha256(b"codebook A").hexdigest()
OTHER_SHA = hashlib.sha256(b"codebook B").hexdigest()
HAVE_ZSTD = tokenstream.zstandard is not None
CODECS = [
    "ctx",
    "ctx-v3",
    "none",
    "zlib",
    pytest.param("zstd", marks=pytest.mark.skipif(not HAVE_ZSTD, reason="zstandard is not installed (provq[edge])")),
]


@functools.cache
def codebook_for(k: int) -> np.ndarray:
    """A random K x 4 float32 codebook (read-only), the same for the same K."""
    codebook = np.random.default_rng(k).normal(size=(k, 4)).astype(np.float32)
    codebook.setflags(write=False)
    return codebook


def make_header(k: int = 1024, h: int = 4, w: int = 6, *, codec: str = "ctx", **kw: object) -> StreamHeader:
    """A header for an h x w grid of a downsample-8 model on frames of exactly the model size; codec "ctx-v3": codec
    ctx against ``codebook_for(k)`` (version 3 while K <= 4096, where writers rank near codes)."""
    if codec == "ctx-v3":
        sha = codebook_sha256(codebook_for(k))
        return StreamHeader(sha, k, h, w, 8 * h, 8 * w, 8 * h, 8 * w, codec="ctx", near=ctxcoder.near_count(k), **kw)
    return StreamHeader(SHA, k, h, w, 8 * h, 8 * w, 8 * h, 8 * w, codec=codec, **kw)


def codebook_of(header: StreamHeader) -> np.ndarray | None:
    """The codebook a header made by ``make_header`` needs, or None."""
    return codebook_for(header.codebook_size) if header.near else None


def mostly_static(k: int, h: int, w: int, n: int, changes: int, *, seed: int = 0) -> list[np.ndarray]:
    """n frames of one random scene with ``changes`` ids redrawn per frame."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, k, (h, w))
    frames = []
    for _ in range(n):
        frame = frame.copy()
        frame.flat[rng.integers(0, h * w, changes)] = rng.integers(0, k, changes)
        frames.append(frame)
    return frames


def write(path: Path, header: StreamHeader, frames: list[np.ndarray], **kw: object) -> None:
    with TokenStreamWriter(path, header, codebook=codebook_of(header), **kw) as w:
        for i, ids in enumerate(frames):
            w.write(ids, 40.0 * i)


def read(
    path: Path, codebook: np.ndarray | None = None, **kw: object
) -> tuple[list[Frame | Gap], tokenstream.ReadReport]:
    with TokenStreamReader(path, codebook=codebook, **kw) as r:
        items = list(r)
        return items, r.report


def frames_of(items: list[Frame | Gap]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def overwrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes without truncating it to zero first (ext4 flushes those on close: 3 ms a time)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def chunk_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each chunk of an intact stream, parsed with the spec's offsets."""
    (meta_len,) = struct.unpack_from("<I", data, 92)
    pos, spans = 100 + meta_len, []
    while pos < len(data):
        assert data[pos : pos + 4] == b"PTKC"
        (stored,) = struct.unpack_from("<I", data, pos + 24)
        spans.append((pos, pos + 44 + stored))
        pos += 44 + stored
    return spans


def env() -> dict[str, str]:
    """The environment of a child Python: one OpenMP thread, this process's import path."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
