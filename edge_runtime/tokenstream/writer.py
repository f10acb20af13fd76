"""Writing a ``.ptok`` stream: frames appended one whole, synced chunk at a time; resuming a stream after a kill."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np

from .. import bitpack, ctxcoder, rans
from ..errors import EdgeError
from ..formats.files import write_bytes_atomic
from .layout import (
    CHUNK_STORED,
    DEFAULT_LEVEL,
    DELTA,
    GAP,
    GAP_STRUCT,
    KEYFRAME,
    MAX_CHUNK_BYTES,
    MAX_REASON_BYTES,
    MAX_RECORDS,
    RECORD_STRUCT,
    ChunkHeader,
    StreamHeader,
    zstandard,
)
from .reader import TokenStreamReader, codebook_near

try:
    import fcntl
except ImportError:  # not POSIX: no writer lock
    fcntl = None

log = logging.getLogger("provq.edge_runtime.tokenstream")


class TokenStreamWriter:
    """Appends frames to a ``.ptok`` file, one chunk per ``frames_per_chunk`` frames, each written whole and synced.

    A new file gets its header atomically (written beside it, synced, renamed). ``append=True`` resumes an existing
    stream after checking that its header matches (the metadata may differ; the file keeps its own), cutting off a
    torn tail left by a kill. A failed write (full disk, file size limit) removes the partial chunk, closes the
    writer and raises a one-line EdgeError; every chunk written before stays readable.
    """

    def __init__(
        self,
        path: str | Path,
        header: StreamHeader,
        *,
        frames_per_chunk: int = 30,  # frames per chunk: what a crash can lose, and the unit of random access
        fsync: bool = True,  # fsync every chunk (power-loss safe); without it a killed process still loses nothing
        append: bool = False,  # resume an existing stream instead of refusing to touch it
        level: int | None = None,  # compression level (zlib 6, zstd 3 by default)
        codebook: np.ndarray | None = None,  # K x D float32, the model's: needed when header.near (version 3)
    ) -> None:
        if not isinstance(header, StreamHeader):
            raise EdgeError(f"header must be a StreamHeader, got {type(header).__name__}")
        if not isinstance(frames_per_chunk, int) or not 1 <= frames_per_chunk <= MAX_RECORDS - 1:
            raise EdgeError(f"frames_per_chunk must be in [1, {MAX_RECORDS - 1}], got {frames_per_chunk!r}")
        if header.codec == "zstd" and zstandard is None:
            raise EdgeError("codec zstd needs the zstandard package: pip install zstandard (or use codec zlib)")
        self.path, self.header = Path(path), header
        self.codebook = codebook
        self._near = codebook_near(header, codebook, f"writing {self.path}")
        self.frames_per_chunk, self.fsync = frames_per_chunk, fsync
        self.level = DEFAULT_LEVEL.get(header.codec, 0) if level is None else level
        self.chunk_index = 0  # index of the next chunk written
        self.frame_index = 0  # index of the next frame
        self.truncated_bytes = 0  # torn tail removed on append
        self._records: list[bytes] = []
        self._raw_bytes = self._frames = 0  # of the pending chunk
        self._first = 0  # frame index of the pending chunk's first record
        self._prev: np.ndarray | None = None  # previous frame of the pending chunk (flat int32)
        self._coded: ctxcoder.ChunkEncoder | None = None  # codec ctx: the pending chunk's coder
        self._fd: int | None = None
        if self.path.exists():
            if not append:
                raise EdgeError(f"{self.path} already exists: pass append=True to resume it, or remove it")
            self._open()
            self._resume()
        else:
            self._create()
            self._open()

    def _create(self) -> None:
        try:
            write_bytes_atomic(self.path, self.header.to_bytes(), fsync=self.fsync)
        except OSError as err:
            raise EdgeError(f"cannot create token stream {self.path}: {err.strerror or err}") from None

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as err:
            raise EdgeError(f"cannot open token stream {self.path} for writing: {err.strerror}") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._close_fd()
                raise EdgeError(f"{self.path} is being written by another process: write to another file") from None

    def _resume(self) -> None:
        try:
            with TokenStreamReader(
                self.path, expect_codebook_sha256=self.header.codebook_sha256, codebook=self.codebook
            ) as reader:
                for _ in reader:
                    pass
                old, report, size = reader.header, reader.report, reader._size
        except EdgeError:
            self._close_fd()
            raise
        for f in fields(StreamHeader):
            if f.name != "metadata" and getattr(old, f.name) != getattr(self.header, f.name):
                self._close_fd()
                raise EdgeError(
                    f"cannot append to {self.path}: its {f.name} is {getattr(old, f.name)!r}, not "
                    f"{getattr(self.header, f.name)!r}; write to a new file"
                )
        if report.damaged:
            log.warning("%s: appending after damage: %s", self.path, report.summary())
        if report.torn_tail_bytes:
            os.ftruncate(self._fd, size - report.torn_tail_bytes)
            self.truncated_bytes = report.torn_tail_bytes
        self.header = old
        self.chunk_index, self.frame_index = report.next_chunk_index, report.next_frame_index

    def __enter__(self) -> TokenStreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writable(self) -> int:
        if self._fd is None:
            raise EdgeError(f"token stream {self.path} is closed")
        return self._fd

    def write(self, ids: np.ndarray, timestamp_ms: float) -> int:
        """Add one frame of ids (h x w integers in [0, K)); returns its frame index."""
        self._writable()
        h = self.header
        ids = np.asarray(ids)
        if ids.shape != (h.grid_height, h.grid_width):
            raise EdgeError(
                f"frame {self.frame_index} has ids of shape {ids.shape}, this stream's token grid is "
                f"{h.grid_height} x {h.grid_width}: the model and the stream header disagree"
            )
        if ids.dtype.kind not in "iu":
            raise EdgeError(f"frame {self.frame_index} has ids of dtype {ids.dtype}: token ids must be integers")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= h.codebook_size:
            raise EdgeError(
                f"frame {self.frame_index} has token ids in [{lo}, {hi}], outside [0, {h.codebook_size}): "
                "the model's codebook size and the stream header disagree"
            )
        timestamp = _finite(timestamp_ms, "timestamp_ms")
        cells, bits = ids.size, h.bits_per_id
        key_size = bitpack.packed_size(cells, bits)
        if self._raw_bytes + RECORD_STRUCT.size + key_size > MAX_CHUNK_BYTES:
            self.flush()
        flat = ids.reshape(-1).astype(np.int32)
        index, kind, body = self.frame_index, KEYFRAME, b""
        keyframe_due = h.keyframe_interval and index % h.keyframe_interval == 0
        if h.codec == "ctx":  # the ids are coded at flush; the record itself has no body
            kind = DELTA if h.delta and self._prev is not None and not keyframe_due else KEYFRAME
            if self._coded is None:
                self._coded = ctxcoder.ChunkEncoder((h.grid_height, h.grid_width), h.codebook_size, self._near)
            self._coded.add(kind == KEYFRAME, flat)
            self._raw_bytes += 4 * key_size  # bounds the coded payload (at most ~3.2 x the packed ids)
            body = None
        elif h.delta and self._prev is not None and not keyframe_due:
            changed = flat != self._prev
            n = int(np.count_nonzero(changed))
            if bitpack.packed_size(cells, 1) + bitpack.packed_size(n, bits) < key_size:
                kind, body = DELTA, bitpack.pack_mask(changed) + bitpack.pack(flat[changed], bits)
        if body is None:
            body = b""
        elif kind == KEYFRAME:
            body = bitpack.pack(flat, bits)
        self._add(RECORD_STRUCT.pack(kind, index, timestamp) + body)
        self._prev = flat
        self.frame_index += 1
        self._frames += 1
        if self._frames >= self.frames_per_chunk:
            self.flush()
        return index

    def write_gap(self, from_ms: float, to_ms: float, reason: str = "") -> None:
        """Record that the source stalled or reconnected between two timestamps; ends the current chunk."""
        self._writable()
        text = str(reason).encode("utf-8")
        if len(text) > MAX_REASON_BYTES:
            raise EdgeError(f"gap reason is {len(text)} bytes, over the {MAX_REASON_BYTES}-byte limit: shorten it")
        start, stop = _finite(from_ms, "from_ms"), _finite(to_ms, "to_ms")
        self._add(RECORD_STRUCT.pack(GAP, self.frame_index, start) + GAP_STRUCT.pack(stop, len(text)) + text)
        self.flush()

    def _add(self, record: bytes) -> None:
        if not self._records:
            self._first = self.frame_index
        self._records.append(record)
        self._raw_bytes += len(record)
        if len(self._records) >= MAX_RECORDS:
            self.flush()

    def flush(self) -> None:
        """Write the pending records as one chunk now (one write, then fsync); nothing to do when there are none."""
        fd = self._writable()
        if not self._records:
            return
        raw = b"".join(self._records)
        payload = raw
        h = self.header
        if h.codec == "ctx":
            coded = self._coded.finish() if self._coded is not None else rans.RansEncoder().finish(1)  # gaps only
            payload = ctxcoder.pack_payload(raw, coded)
        elif h.codec == "zlib":
            payload = zlib.compress(raw, self.level)
        elif self.header.codec == "zstd":
            payload = zstandard.ZstdCompressor(level=self.level, write_content_size=True).compress(raw)
        flags = CHUNK_STORED if len(payload) >= len(raw) and h.codec != "ctx" else 0  # compressing did not pay
        if flags & CHUNK_STORED:
            payload = raw
        records = len(self._records)
        head = ChunkHeader(self.chunk_index, self._first, self._frames, records, len(payload), len(raw), flags)
        chunk = head.to_bytes(payload)
        start = os.fstat(fd).st_size
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except OSError as err:
            self._fail(err, start)
        self.chunk_index += 1
        self._records, self._raw_bytes, self._frames, self._prev, self._coded = [], 0, 0, None, None

    def _fail(self, err: OSError, start: int) -> None:
        """Remove a partial chunk, close, and raise one line saying what was lost and what is intact."""
        with contextlib.suppress(OSError):  # if this fails too, the reader sees a torn tail
            os.ftruncate(self._fd, start)
        lost = f"chunk {self.chunk_index} ({self._frames} frames from frame {self._first}) was not written"
        kept = f"the {self.chunk_index} chunks before it are intact"
        self._records, self._frames, self._coded = [], 0, None
        self._close_fd()
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            why = "the disk is full" if err.errno != errno.EFBIG else "the file size limit was reached"
            raise EdgeError(f"{self.path}: {why}: {lost}; {kept}: free space and resume with append") from None
        raise EdgeError(f"{self.path}: write failed ({err.strerror or err}): {lost}; {kept}") from None

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Flush the pending frames and close; safe to call twice."""
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            self._close_fd()


def _finite(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise EdgeError(f"{name} must be a finite number of milliseconds, got {value!r}")
    return number
