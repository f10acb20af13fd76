"""Reading a ``.ptok`` stream: its frames and gaps in order, damaged chunks skipped and reported."""

from __future__ import annotations

import functools
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from .. import bitpack, ctxcoder
from ..errors import EdgeError
from ..formats.manifest import codebook_sha256
from .layout import (
    CHUNK_HEADER_SIZE,
    CHUNK_MAGIC,
    CHUNK_STORED,
    DELTA,
    GAP,
    GAP_STRUCT,
    KEYFRAME,
    MAX_CHUNK_BYTES,
    MAX_RECORDS,
    RECORD_STRUCT,
    ChunkHeader,
    StreamHeader,
    read_exact,
    read_header,
    zstandard,
)

log = logging.getLogger("provq.edge_runtime.tokenstream")


class Frame(NamedTuple):
    index: int  # frame index in the stream, 0-based, consecutive
    timestamp_ms: float
    ids: np.ndarray  # h x w int32 in [0, K)


class Gap(NamedTuple):
    frame_index: int  # the index the next frame gets (a gap takes no index)
    from_ms: float  # the source stalled or reconnected between these timestamps
    to_ms: float
    reason: str


@dataclass
class Damage:
    """A run of bytes the reader skipped; ``first_chunk`` .. ``last_chunk`` are the chunk numbers lost."""

    first_chunk: int  # the damaged chunk, or the next expected one when its header is unreadable
    last_chunk: int | None  # None: the damage runs to the end of the file
    offset: int  # byte offset of the first skipped byte
    length: int  # bytes skipped
    reason: str

    def describe(self) -> str:
        if self.last_chunk is None:
            chunks = f"chunk {self.first_chunk} and any after it"
        elif self.last_chunk < self.first_chunk:
            chunks = f"unreadable bytes before chunk {self.first_chunk}"
        elif self.last_chunk == self.first_chunk:
            chunks = f"chunk {self.first_chunk}"
        else:
            chunks = f"chunks {self.first_chunk}-{self.last_chunk}"
        return f"{chunks} ({self.reason}; {self.length} bytes at offset {self.offset})"


@dataclass
class ReadReport:
    """What a pass over a stream found. Damage is an error (``check``); a torn tail is the normal end after a kill."""

    path: Path
    chunks: int = 0  # intact chunks decoded
    frames: int = 0
    keyframes: int = 0
    gaps: int = 0
    chunk_bytes: int = 0  # bytes of intact chunks
    damaged: list[Damage] = field(default_factory=list)
    torn_tail_bytes: int = 0  # bytes of an incomplete last chunk, ignored
    next_chunk_index: int = 0  # where an append resumes
    next_frame_index: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged

    def summary(self) -> str:
        text = f"{self.chunks} chunks, {self.frames} frames, {self.gaps} gaps intact"
        if self.damaged:
            text += "; damaged: " + ", ".join(d.describe() for d in self.damaged)
        if self.torn_tail_bytes:
            text += f"; torn tail: {self.torn_tail_bytes} bytes ignored"
        return text

    def check(self) -> None:
        """Raise a one-line EdgeError naming the damaged chunks, if any (after the intact ones were decoded)."""
        if self.damaged:
            names = ", ".join(d.describe() for d in self.damaged)
            raise EdgeError(f"{self.path}: damaged token stream, skipped {names}; the other chunks were decoded")


def codebook_near(header: StreamHeader, codebook: np.ndarray | None, what: str) -> np.ndarray | None:
    """The ``ctxcoder.near_codes`` table a version 3 stream is coded with (None for other versions). Without a
    ``codebook``, the shipped default model's is used when the header's fingerprint is its. A one-line EdgeError when
    the codebook is missing or is not the one the fingerprint names."""
    if not header.near:
        return None
    fix = "pass the model's codebook (provq-decode and provq-run do: --model DIR)"
    if codebook is None:
        codebook = _default_codebook(header.codebook_sha256)
    if codebook is None:
        raise EdgeError(f"{what}: token stream version 3 codes ids against the model's codebook: {fix}")
    codebook = np.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[0] != header.codebook_size:
        raise EdgeError(f"{what}: a codebook of shape {codebook.shape} for K = {header.codebook_size}: {fix}")
    if codebook_sha256(codebook) != header.codebook_sha256:
        raise EdgeError(
            f"{what}: the codebook given is not the stream's (fingerprint {header.codebook_sha256[:12]}): pass the "
            "codebook of the model the stream was made with"
        )
    return ctxcoder.near_codes(codebook, header.near)


@functools.lru_cache(maxsize=2)
def _default_codebook(fingerprint: str) -> np.ndarray | None:
    """The shipped default model's codebook (read-only, read once per process) if ``fingerprint`` is its, else
    None."""
    from ..manifest import load_manifest
    from ..stable import load_codebook

    try:
        manifest = load_manifest("default")
    except EdgeError:
        return None
    if manifest.codebook_sha256 != fingerprint:
        return None
    codebook = load_codebook(manifest)
    codebook.setflags(write=False)
    return codebook


class _Bad(Exception):
    """A chunk that cannot be decoded; becomes a Damage entry."""


class TokenStreamReader:
    """Iterates a stream's frames (``Frame``) and gaps (``Gap``) in order; ``report`` says what was skipped."""

    def __init__(
        self, path: str | Path, *, expect_codebook_sha256: str | None = None, codebook: np.ndarray | None = None
    ) -> None:
        """``codebook``: the model's K x D float32 codebook (``stable.load_codebook``), which version 3 streams need;
        None: the shipped default model's, for the streams it made."""
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except FileNotFoundError:
            raise EdgeError(
                f"token stream {self.path} does not exist: pass a .ptok file written by provq-run"
            ) from None
        except OSError as err:
            raise EdgeError(f"cannot open token stream {self.path}: {err.strerror}") from None
        try:
            self._size = os.fstat(self._f.fileno()).st_size
            self.header, self.data_offset = read_header(self._f, self._size, self.path)
            self._check_codebook(expect_codebook_sha256)
            self._near = codebook_near(self.header, codebook, str(self.path))
            if self.header.codec == "zstd" and zstandard is None:
                raise EdgeError(f"{self.path} is zstd-compressed: pip install zstandard (or provq[edge]) to read it")
        except BaseException:
            self._f.close()
            raise
        self.report = ReadReport(self.path)

    def _check_codebook(self, expected: str | None) -> None:
        if expected is None or expected.lower() == self.header.codebook_sha256:
            return
        raise EdgeError(
            f"{self.path} was made with codebook {self.header.codebook_sha256[:12]}, not this model's "
            f"{expected.lower()[:12]}: decode it with the model whose manifest codebook_sha256 starts with "
            f"{self.header.codebook_sha256[:12]}"
        )

    def __enter__(self) -> TokenStreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def frames(self) -> Iterator[Frame]:
        """Only the frames, skipping gap records."""
        return (item for item in self if isinstance(item, Frame))

    def __iter__(self) -> Iterator[Frame | Gap]:
        """One pass from the first chunk; resets ``report``."""
        report = self.report = ReadReport(self.path)
        pending: Damage | None = None  # damage seen, closed when the next intact chunk is found
        pos = self.data_offset
        while pos < self._size:
            try:
                index, end, items, keyframes = self._chunk_at(pos)
            except _Torn:
                report.torn_tail_bytes = self._size - pos
                break
            except _Bad as bad:
                reason, index, resume = bad.args
                if pending is None:
                    first = report.next_chunk_index if index is None else index
                    pending = Damage(first, index, pos, 0, reason)  # last chunk None: unknown so far
                    log.warning("%s: chunk %d damaged at offset %d (%s), skipping", self.path, first, pos, reason)
                if index is not None:  # its header is intact: the chunk after it is the next one due
                    report.next_chunk_index = max(report.next_chunk_index, index + 1)
                pos = self._find_magic(resume)
                continue
            if index < report.next_chunk_index:  # a repeated or stale chunk: not part of this sequence
                if pending is None:
                    reason = f"out of order, chunk {report.next_chunk_index} was due"
                    report.damaged.append(Damage(index, index, pos, end - pos, reason))
                pos = end
                continue
            if pending is not None:
                pending.last_chunk, pending.length = index - 1, pos - pending.offset
                report.damaged.append(pending)
                pending = None
            elif index > report.next_chunk_index:
                missing = Damage(report.next_chunk_index, index - 1, pos, 0, "missing")
                report.damaged.append(missing)
            report.chunks += 1
            report.keyframes += keyframes
            report.chunk_bytes += end - pos
            report.next_chunk_index = index + 1
            for item in items:
                if isinstance(item, Frame):
                    report.frames += 1
                    report.next_frame_index = item.index + 1
                else:
                    report.gaps += 1
                    report.next_frame_index = item.frame_index
                yield item
            pos = end
        if pending is not None:
            pending.length = self._size - report.torn_tail_bytes - pending.offset
            report.damaged.append(pending)

    def _find_magic(self, start: int, block: int = 1 << 20) -> int:
        """Offset of the next chunk magic at or after ``start``; the file size when there is none."""
        pos = start
        while pos < self._size:
            data = read_exact(self._f, pos, min(block, self._size - pos) + len(CHUNK_MAGIC) - 1)
            hit = data.find(CHUNK_MAGIC)
            if hit >= 0:
                return pos + hit
            pos += block
        return self._size

    def _chunk_at(self, pos: int) -> tuple[int, int, list[Frame | Gap], int]:
        """(index, end offset, items, keyframes) of the chunk at ``pos``; or _Torn, or _Bad(reason, index, resume)."""
        head = read_exact(self._f, pos, CHUNK_HEADER_SIZE)
        if len(head) < CHUNK_HEADER_SIZE:
            if head[:4] == CHUNK_MAGIC[: len(head[:4])]:
                raise _Torn
            raise _Bad("trailing bytes that are not a chunk", None, pos + 1)
        if head[:4] != CHUNK_MAGIC:
            raise _Bad("no chunk magic", None, pos + 1)
        parsed = ChunkHeader.parse(head)
        if parsed is None:
            raise _Bad("chunk header CRC mismatch", None, pos + 1)
        (index, first, n_frames, n_records, stored_len, raw_len, flags, reserved), payload_crc = parsed
        h = self.header
        stored = (bool(flags & CHUNK_STORED) or h.codec == "none") and h.codec != "ctx"
        if (
            flags & ~CHUNK_STORED
            or reserved
            or not 1 <= n_records <= MAX_RECORDS
            or n_frames > n_records
            or not n_records * RECORD_STRUCT.size <= raw_len <= min(MAX_CHUNK_BYTES, n_records * h.max_record_bytes)
            or stored_len > MAX_CHUNK_BYTES
            or (stored and stored_len != raw_len)
        ):
            raise _Bad("chunk header has impossible lengths or flags", index, pos + 1)
        end = pos + CHUNK_HEADER_SIZE + stored_len
        if end > self._size:
            raise _Torn
        payload = read_exact(self._f, pos + CHUNK_HEADER_SIZE, stored_len)
        if zlib.crc32(payload) != payload_crc:
            raise _Bad("payload CRC mismatch", index, end)
        try:
            if h.codec == "ctx":
                try:
                    raw, coded = ctxcoder.split_payload(payload, raw_len)
                except ctxcoder.CoderError as err:
                    raise _Bad(str(err)) from None
                items, keyframes = self._records(raw, first, n_frames, n_records, coded)
            else:
                raw = payload if stored else self._decompress(payload, raw_len)
                items, keyframes = self._records(raw, first, n_frames, n_records)
        except _Bad as bad:
            raise _Bad(str(bad), index, end) from None
        return index, end, items, keyframes

    def _decompress(self, payload: bytes, raw_len: int) -> bytes:
        """Decompress at most ``raw_len`` bytes; anything else is damage."""
        try:
            if self.header.codec == "zlib":
                d = zlib.decompressobj()
                raw = d.decompress(payload, raw_len)
                complete = d.eof and not d.unconsumed_tail and not d.unused_data
            else:
                if zstandard.frame_content_size(payload) != raw_len:
                    raise _Bad("zstd frame size disagrees with the chunk header")
                raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
                complete = True
        except (zlib.error, getattr(zstandard, "ZstdError", zlib.error)) as err:
            raise _Bad(f"payload does not decompress ({err})") from None
        if not complete or len(raw) != raw_len:
            raise _Bad("payload decompresses to the wrong length")
        return raw

    def _records(
        self, raw: bytes, first: int, n_frames: int, n_records: int, coded: memoryview | None = None
    ) -> tuple[list[Frame | Gap], int]:
        """Decode a chunk's records: (frames and gaps, keyframe count), all of them or _Bad. With ``coded`` (codec
        ctx) frame records carry no body: their ids are decoded from ``coded`` once all records are read."""
        h = self.header
        cells, bits = h.grid_height * h.grid_width, h.bits_per_id
        view, pos = memoryview(raw), 0
        items: list[Frame | Gap] = []
        prev: np.ndarray | None = None
        frames = keyframes = 0
        key_flags: list[bool] = []  # codec ctx: each frame record's kind

        def take(size: int) -> memoryview:
            nonlocal pos
            if pos + size > len(view):
                raise _Bad("record runs past the end of the chunk")
            pos += size
            return view[pos - size : pos]

        for _ in range(n_records):
            kind, index, timestamp = RECORD_STRUCT.unpack(take(RECORD_STRUCT.size))
            if index != first + frames:
                raise _Bad(f"frame index {index} where {first + frames} was due")
            if kind == GAP:
                to_ms, length = GAP_STRUCT.unpack(take(GAP_STRUCT.size))
                try:
                    reason = bytes(take(length)).decode("utf-8")
                except UnicodeDecodeError:
                    raise _Bad("gap reason is not UTF-8") from None
                items.append(Gap(index, timestamp, to_ms, reason))
                continue
            if coded is not None and (kind == KEYFRAME or (kind == DELTA and frames)):
                keyframes += kind == KEYFRAME
                key_flags.append(kind == KEYFRAME)
                items.append(Frame(index, timestamp, None))
                frames += 1
                continue
            if kind == KEYFRAME:
                ids = bitpack.unpack(take(bitpack.packed_size(cells, bits)), bits, cells)
                keyframes += 1
            elif kind == DELTA and prev is not None:
                mask = bitpack.unpack_mask(take(bitpack.packed_size(cells, 1)), cells)
                changed = int(np.count_nonzero(mask))
                ids = prev.copy()
                ids[mask] = bitpack.unpack(take(bitpack.packed_size(changed, bits)), bits, changed)
            elif kind == DELTA:
                raise _Bad("delta frame with no keyframe before it in the chunk")
            else:
                raise _Bad(f"unknown record kind {kind}")
            if ids.max() >= h.codebook_size:
                raise _Bad(f"token id {int(ids.max())} is not below K = {h.codebook_size}")
            prev = ids
            items.append(Frame(index, timestamp, ids.astype(np.int32).reshape(h.grid_height, h.grid_width)))
            frames += 1
        if pos != len(view):
            raise _Bad(f"{len(view) - pos} bytes after the last record")
        if frames != n_frames:
            raise _Bad(f"{frames} frames where the chunk header says {n_frames}")
        if coded is not None:
            items = self._ctx_ids(items, coded, key_flags)
        return items, keyframes

    def _ctx_ids(self, items: list[Frame | Gap], coded: memoryview, key_flags: list[bool]) -> list[Frame | Gap]:
        """Fill in the ids of a ctx chunk's frames (``key_flags``: which frame records are keyframes)."""
        h = self.header
        try:
            grid = (h.grid_height, h.grid_width)
            planes = iter(ctxcoder.decode_chunk(coded, key_flags, grid, h.codebook_size, self._near))
        except ctxcoder.CoderError as err:
            raise _Bad(f"coded ids do not decode ({err})") from None
        shape = (h.grid_height, h.grid_width)
        return [
            item._replace(ids=next(planes).astype(np.int32).reshape(shape)) if isinstance(item, Frame) else item
            for item in items
        ]


class _Torn(Exception):
    """The file ends inside a chunk: the writer was stopped mid-write."""
