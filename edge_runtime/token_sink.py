"""Where the pipeline's token ids go: a ``.ptok`` file, or a scratch stream that only counts the bytes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .tokenstream import StreamHeader, TokenStreamWriter

SCRATCH_LIMIT = 1 << 20  # bytes a scratch stream (no --tokens) may reach before its counted chunks are cut off


class TokenSink:
    """The token stream writer, opened at the first frame (its geometry goes into the header).

    Without a path the stream goes to a scratch file that only measures bytes: whenever it grows past SCRATCH_LIMIT,
    its flushed chunks are counted and cut off (the writer appends with O_APPEND, so it carries on at the new end),
    so an endless run without --tokens needs bounded space. The scratch folder is removed on close.
    """

    def __init__(self, path: Path | None, frames_per_chunk: int, codebook: np.ndarray | None = None) -> None:
        self.frames_per_chunk = frames_per_chunk
        self.codebook = codebook  # K x D float32: version 3 streams are coded against it
        self.path = path
        self.writer: TokenStreamWriter | None = None
        self.frames = 0  # written
        self.flushed_frames = 0  # in chunks on disk
        self._scratch_dir: Path | None = None
        self._size = 0  # file size after the last write
        self._counted = 0  # bytes cut off a scratch stream
        self._header_bytes = 0
        self.changed = 0  # ids that differ from the previous frame's, summed over frames after the first
        self._last: np.ndarray | None = None

    def open(self, header: StreamHeader) -> None:
        if self.path is None:
            self._scratch_dir = Path(tempfile.mkdtemp(prefix="provq-run-"))
            self.path = self._scratch_dir / "scratch.ptok"
        self.writer = TokenStreamWriter(
            self.path,
            header,
            frames_per_chunk=self.frames_per_chunk,
            fsync=self._scratch_dir is None,
            codebook=self.codebook,
        )
        self._header_bytes = self._size = len(header.to_bytes())

    def write(self, ids: np.ndarray, timestamp_ms: float) -> None:
        self.writer.write(ids, timestamp_ms)
        if self._last is not None:
            self.changed += int(np.count_nonzero(ids != self._last))
        self._last = ids
        self.frames += 1
        self._measure()

    def write_gap(self, from_ms: float, to_ms: float) -> None:
        self.writer.write_gap(from_ms, to_ms, "source reconnected")
        self._measure()

    def _measure(self) -> None:
        size = os.stat(self.path).st_size
        if size != self._size:  # a chunk was flushed: every frame so far is on disk
            self.flushed_frames = self.frames
        if self._scratch_dir is not None and size > SCRATCH_LIMIT:
            self._counted += size - self._header_bytes
            os.truncate(self.path, self._header_bytes)
            size = self._header_bytes
        self._size = size

    def changed_per_frame(self) -> float | None:
        """Mean ids per frame that differ from the previous frame (None before a second frame)."""
        return round(self.changed / (self.frames - 1), 2) if self.frames > 1 else None

    def bytes(self) -> int:
        """Stream bytes on disk so far: the header and the flushed chunks."""
        return self._counted + self._size

    def close(self) -> int:
        """Flush, close, return the final stream bytes; the scratch folder is removed."""
        try:
            if self.writer is not None:
                self.writer.close()
                self._size = os.stat(self.path).st_size
                self.flushed_frames = self.frames
            return self.bytes()
        finally:
            if self._scratch_dir is not None:
                shutil.rmtree(self._scratch_dir, ignore_errors=True)
