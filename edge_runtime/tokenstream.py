"""Token stream ``.ptok``: the one definition of the file that holds a video's token ids. Byte layout: docs/PTOK.md.

    header   magic "PTOK", version, flags, codebook sha256, K, bits per id, grid h x w, fps, frame geometry,
             codec, keyframe interval, JSON metadata (<= 16 KiB), CRC-32
    chunk*   magic "PTKC", chunk index, first frame index, frame and record counts, lengths, flags, CRC-32 of the
             chunk header, CRC-32 of the payload; the payload (zlib / zstd / stored) is a run of records:
             keyframe (all ids packed at ceil(log2 K) bits), delta (change mask + changed ids, lossless, against the
             previous frame of the same chunk) or gap (the source stalled: from/to timestamps, reason).
             Version 2 (codec ctx, the default): the records without their ids (zlib), then every id of the chunk
             context-coded by ctxcoder.py (lossless; the model restarts at each chunk).

Every chunk decodes on its own (its first frame is a keyframe). The writer appends each chunk with one write and an
fsync and never rewrites earlier bytes, so after a kill every complete chunk reads back; the reader stops at a torn
tail, and skips a damaged chunk by resyncing on the next chunk magic, listing what it skipped in ``reader.report``.

    with TokenStreamWriter("out.ptok", header) as w:        # header = StreamHeader(...), see below
        w.write(ids, timestamp_ms)                           # ids: h x w ints in [0, K)
    with TokenStreamReader("out.ptok", expect_codebook_sha256=manifest.codebook_sha256) as r:
        for item in r:                                       # Frame(index, timestamp_ms, ids) or Gap(...)
            ...
        r.report.check()                                     # EdgeError naming damaged chunks, if any
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from . import bitpack, ctxcoder, rans
from .errors import EdgeError

try:
    import zstandard
except ImportError:  # optional: only zstd streams need it
    zstandard = None
try:
    import fcntl
except ImportError:  # not POSIX: no writer lock
    fcntl = None

log = logging.getLogger(__name__)

VERSION = 2  # written with codec ctx; the other codecs write version 1, byte for byte as before
VERSIONS = (1, 2)  # read
MAGIC = b"PTOK"
CHUNK_MAGIC = b"PTKC"
CODECS = ("none", "zlib", "zstd", "ctx")  # header codec byte = index; ctx (context-coded ids) needs version 2
FITS = ("pad", "crop", "resize")  # header fit byte = index; the same names and order as preprocess.FITS
KEYFRAME, DELTA, GAP = 0, 1, 2  # record kinds
HEADER_DELTA = 1  # header flags bit 0: frames may be coded against the previous frame
CHUNK_STORED = 1  # chunk flags bit 0: the payload is stored uncompressed

MAX_METADATA_BYTES = 16 * 1024
MAX_CODEBOOK_SIZE = 1 << 30
MAX_GRID_CELLS = 1 << 22
MAX_FRAME_SIDE = 1 << 20
MAX_CHUNK_BYTES = 64 << 20  # stored and decompressed payload
MAX_RECORDS = 1 << 16
MAX_REASON_BYTES = 255

_HEADER = struct.Struct("<4sHH32sIBBBBIId8I")  # fixed part, followed by the metadata and a CRC-32
_CHUNK = struct.Struct("<4sIQIIIIHH")  # followed by the header CRC-32 and the payload CRC-32
_CRC = struct.Struct("<I")
_RECORD = struct.Struct("<BQd")  # kind, frame index, timestamp ms
_GAP = struct.Struct("<dB")  # to ms, reason length
CHUNK_HEADER_SIZE = _CHUNK.size + 8
_DEFAULT_LEVEL = {"zlib": 6, "zstd": 3}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def raw_bits_per_frame(grid_height: int, grid_width: int, codebook_size: int) -> int:
    """Bits one frame costs packed without delta coding or compression: h * w * ceil(log2 K)."""
    return grid_height * grid_width * bitpack.bits_for(codebook_size)


@dataclass(frozen=True)
class StreamHeader:
    """What a stream's ids mean and how to turn them back into frames. Checked on construction (EdgeError).

    The geometry fields carry preprocess.Geometry's names: ``StreamHeader(..., **dataclasses.asdict(geometry))``.
    """

    codebook_sha256: str  # the model manifest's codebook_sha256 (64 lowercase hex digits): what the ids index
    codebook_size: int  # K: ids are in [0, K)
    grid_height: int  # token grid rows h
    grid_width: int  # token grid columns w
    height: int  # the original frame size, which decoding restores
    width: int
    model_height: int  # the model's input size: the grid times the downsample factor
    model_width: int
    fit: str = "pad"  # how frames were fitted to the model size: pad | crop | resize
    top: int = 0  # crop offsets (fit == "crop"), 0 otherwise
    left: int = 0
    fps: float = 0.0  # nominal frame rate; 0 when unknown (a folder of images)
    codec: str = "ctx"  # chunk payloads: ctx (context-coded ids, version 2) | zlib | zstd | none (version 1)
    delta: bool = True  # code frames against the previous frame of the chunk (lossless)
    keyframe_interval: int = 0  # also a keyframe whenever frame_index % N == 0; 0: only each chunk's first frame
    metadata: dict[str, Any] = field(default_factory=dict)  # small JSON object: model preset, source URI, ...

    def __post_init__(self) -> None:
        bad = _header_problem(self)
        if bad:
            raise EdgeError(f"invalid token stream header: {bad}")

    @property
    def bits_per_id(self) -> int:
        return bitpack.bits_for(self.codebook_size)

    @property
    def raw_bits_per_frame(self) -> int:
        return raw_bits_per_frame(self.grid_height, self.grid_width, self.codebook_size)

    @property
    def downsample(self) -> int:
        return self.model_height // self.grid_height

    @property
    def version(self) -> int:
        return 2 if self.codec == "ctx" else 1

    def to_bytes(self) -> bytes:
        meta = _metadata_bytes(self.metadata)
        fixed = _HEADER.pack(
            MAGIC, self.version, HEADER_DELTA if self.delta else 0, bytes.fromhex(self.codebook_sha256),
            self.codebook_size, self.bits_per_id, CODECS.index(self.codec), FITS.index(self.fit), 0,
            self.grid_height, self.grid_width, self.fps, self.height, self.width, self.model_height,
            self.model_width, self.top, self.left, self.keyframe_interval, len(meta),
        )  # fmt: skip
        body = fixed + meta
        return body + _CRC.pack(zlib.crc32(body))


def _metadata_bytes(metadata: Any) -> bytes:
    if not isinstance(metadata, dict):
        raise EdgeError("invalid token stream header: metadata must be a dict (a JSON object)")
    try:
        text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise EdgeError(f"invalid token stream header: metadata is not plain JSON ({err})") from None
    data = text.encode("utf-8")
    if len(data) > MAX_METADATA_BYTES:
        raise EdgeError(f"token stream metadata is {len(data)} bytes, over the {MAX_METADATA_BYTES}-byte limit")
    return data


def _header_problem(h: StreamHeader) -> str | None:  # noqa: PLR0911
    """Why a header is invalid, or None."""
    ints = ("codebook_size", "grid_height", "grid_width", "height", "width", "model_height", "model_width", "top",
            "left", "keyframe_interval")  # fmt: skip
    for name in ints:
        value = getattr(h, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
            return f"{name} must be an integer in [0, 2**32), got {value!r}"
    if not isinstance(h.codebook_sha256, str) or not _HEX64.fullmatch(h.codebook_sha256):
        return f"codebook_sha256 must be 64 lowercase hex digits (the manifest's), got {h.codebook_sha256!r}"
    if not 2 <= h.codebook_size <= MAX_CODEBOOK_SIZE:
        return f"codebook_size {h.codebook_size} is outside [2, {MAX_CODEBOOK_SIZE}]"
    if min(h.grid_height, h.grid_width) < 1 or h.grid_height * h.grid_width > MAX_GRID_CELLS:
        return f"token grid {h.grid_height} x {h.grid_width} is empty or over {MAX_GRID_CELLS} cells"
    if not 1 <= min(h.height, h.width) <= max(h.height, h.width, h.model_height, h.model_width) <= MAX_FRAME_SIDE:
        return f"frame size {h.height} x {h.width} / model size {h.model_height} x {h.model_width} is out of range"
    ds = h.model_height // h.grid_height
    if ds < 1 or h.model_height != ds * h.grid_height or h.model_width != ds * h.grid_width:
        return (
            f"model size {h.model_height} x {h.model_width} is not the token grid {h.grid_height} x {h.grid_width}"
            " times one downsample factor"
        )
    if h.fit not in FITS:
        return f"fit {h.fit!r} is not one of {', '.join(FITS)}"
    if h.fit == "crop" and (h.top + h.model_height > h.height or h.left + h.model_width > h.width):
        return f"crop {h.model_height} x {h.model_width} at ({h.top}, {h.left}) leaves the {h.height} x {h.width} frame"
    if h.fit != "crop" and (h.top or h.left):
        return f"crop offsets must be 0 with fit {h.fit!r}"
    if not isinstance(h.fps, (int, float)) or isinstance(h.fps, bool) or not (math.isfinite(h.fps) and h.fps >= 0):
        return f"fps must be a finite number >= 0, got {h.fps!r}"
    if h.codec not in CODECS:
        return f"codec {h.codec!r} is not one of {', '.join(CODECS)}"
    if not isinstance(h.delta, bool):
        return f"delta must be True or False, got {h.delta!r}"
    _metadata_bytes(h.metadata)
    return None


def _read_exact(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _read_header(f: BinaryIO, file_size: int, path: Path) -> tuple[StreamHeader, int]:
    """Parse and check the header; returns it and the offset of the first chunk."""
    fixed = _read_exact(f, 0, _HEADER.size)
    if fixed[:4] != MAGIC:
        raise EdgeError(f"{path} is not a provq token stream (no PTOK magic): pass a .ptok file written by provq-run")
    if len(fixed) < _HEADER.size:
        raise EdgeError(f"{path}: token stream header is truncated ({file_size} bytes): the file is incomplete")
    (_, version, flags, sha, k, bits, codec, fit, reserved, gh, gw, fps, height, width, mh, mw, top, left,
     kf_interval, meta_len) = _HEADER.unpack(fixed)  # fmt: skip
    if version not in VERSIONS:
        raise EdgeError(f"{path} is token stream version {version}; this provq reads versions 1 and 2: upgrade provq")
    end = _HEADER.size + meta_len + _CRC.size
    if meta_len > MAX_METADATA_BYTES or end > file_size:
        raise EdgeError(f"{path}: token stream header claims {meta_len} metadata bytes: the header is damaged")
    rest = _read_exact(f, _HEADER.size, meta_len + _CRC.size)
    (crc,) = _CRC.unpack_from(rest, meta_len)
    if zlib.crc32(fixed + rest[:meta_len]) != crc:
        raise EdgeError(f"{path}: token stream header CRC mismatch: the header is damaged, the stream is unreadable")
    if flags & ~HEADER_DELTA or reserved or codec >= len(CODECS) or fit >= len(FITS):
        raise EdgeError(f"{path}: token stream header has unknown flags or codes: written by a newer provq? upgrade")
    try:
        metadata = json.loads(rest[:meta_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EdgeError(f"{path}: token stream metadata is not valid JSON: the header is damaged") from None
    header = StreamHeader(
        sha.hex(), k, gh, gw, height, width, mh, mw, FITS[fit], top, left, fps, CODECS[codec],
        bool(flags & HEADER_DELTA), kf_interval, metadata,
    )  # fmt: skip
    if version != header.version:
        raise EdgeError(f"{path}: version {version} with codec {header.codec}: the header is damaged")
    if bits != header.bits_per_id:
        raise EdgeError(f"{path}: header says {bits} bits per id but K = {k} needs {header.bits_per_id}: damaged")
    return header, end


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


class _Bad(Exception):
    """A chunk that cannot be decoded; becomes a Damage entry."""


class TokenStreamReader:
    """Iterates a stream's frames (``Frame``) and gaps (``Gap``) in order; ``report`` says what was skipped."""

    def __init__(self, path: str | Path, *, expect_codebook_sha256: str | None = None) -> None:
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
            self.header, self.data_offset = _read_header(self._f, self._size, self.path)
            self._check_codebook(expect_codebook_sha256)
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
            data = _read_exact(self._f, pos, min(block, self._size - pos) + len(CHUNK_MAGIC) - 1)
            hit = data.find(CHUNK_MAGIC)
            if hit >= 0:
                return pos + hit
            pos += block
        return self._size

    def _chunk_at(self, pos: int) -> tuple[int, int, list[Frame | Gap], int]:
        """(index, end offset, items, keyframes) of the chunk at ``pos``; or _Torn, or _Bad(reason, index, resume)."""
        head = _read_exact(self._f, pos, CHUNK_HEADER_SIZE)
        if len(head) < CHUNK_HEADER_SIZE:
            if head[:4] == CHUNK_MAGIC[: len(head[:4])]:
                raise _Torn
            raise _Bad("trailing bytes that are not a chunk", None, pos + 1)
        if head[:4] != CHUNK_MAGIC:
            raise _Bad("no chunk magic", None, pos + 1)
        _, index, first, n_frames, n_records, stored_len, raw_len, flags, reserved = _CHUNK.unpack_from(head)
        head_crc, payload_crc = struct.unpack_from("<II", head, _CHUNK.size)
        if zlib.crc32(head[: _CHUNK.size]) != head_crc:
            raise _Bad("chunk header CRC mismatch", None, pos + 1)
        h = self.header
        cells, bits = h.grid_height * h.grid_width, h.bits_per_id
        record_max = _RECORD.size + max(bitpack.packed_size(cells, 1) + bitpack.packed_size(cells, bits),
                                        _GAP.size + MAX_REASON_BYTES)  # fmt: skip
        stored = (bool(flags & CHUNK_STORED) or h.codec == "none") and h.codec != "ctx"
        if (
            flags & ~CHUNK_STORED
            or reserved
            or not 1 <= n_records <= MAX_RECORDS
            or n_frames > n_records
            or not n_records * _RECORD.size <= raw_len <= min(MAX_CHUNK_BYTES, n_records * record_max)
            or stored_len > MAX_CHUNK_BYTES
            or (stored and stored_len != raw_len)
        ):
            raise _Bad("chunk header has impossible lengths or flags", index, pos + 1)
        end = pos + CHUNK_HEADER_SIZE + stored_len
        if end > self._size:
            raise _Torn
        payload = _read_exact(self._f, pos + CHUNK_HEADER_SIZE, stored_len)
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
            kind, index, timestamp = _RECORD.unpack(take(_RECORD.size))
            if index != first + frames:
                raise _Bad(f"frame index {index} where {first + frames} was due")
            if kind == GAP:
                to_ms, length = _GAP.unpack(take(_GAP.size))
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
            planes = iter(ctxcoder.decode_chunk(coded, key_flags, (h.grid_height, h.grid_width), h.codebook_size))
        except ctxcoder.CoderError as err:
            raise _Bad(f"coded ids do not decode ({err})") from None
        shape = (h.grid_height, h.grid_width)
        return [
            item._replace(ids=next(planes).astype(np.int32).reshape(shape)) if isinstance(item, Frame) else item
            for item in items
        ]


class _Torn(Exception):
    """The file ends inside a chunk: the writer was stopped mid-write."""


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
    ) -> None:
        if not isinstance(header, StreamHeader):
            raise EdgeError(f"header must be a StreamHeader, got {type(header).__name__}")
        if not isinstance(frames_per_chunk, int) or not 1 <= frames_per_chunk <= MAX_RECORDS - 1:
            raise EdgeError(f"frames_per_chunk must be in [1, {MAX_RECORDS - 1}], got {frames_per_chunk!r}")
        if header.codec == "zstd" and zstandard is None:
            raise EdgeError("codec zstd needs the zstandard package: pip install zstandard (or use codec zlib)")
        self.path, self.header = Path(path), header
        self.frames_per_chunk, self.fsync = frames_per_chunk, fsync
        self.level = _DEFAULT_LEVEL.get(header.codec, 0) if level is None else level
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
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self.header.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            if self.fsync:  # make the new name itself durable
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as err:
            raise EdgeError(f"cannot create token stream {self.path}: {err.strerror or err}") from None
        finally:
            tmp.unlink(missing_ok=True)

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
            with TokenStreamReader(self.path, expect_codebook_sha256=self.header.codebook_sha256) as reader:
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
        if self._raw_bytes + _RECORD.size + key_size > MAX_CHUNK_BYTES:
            self.flush()
        flat = ids.reshape(-1).astype(np.int32)
        index, kind, body = self.frame_index, KEYFRAME, b""
        keyframe_due = h.keyframe_interval and index % h.keyframe_interval == 0
        if h.codec == "ctx":  # the ids are coded at flush; the record itself has no body
            kind = DELTA if h.delta and self._prev is not None and not keyframe_due else KEYFRAME
            if self._coded is None:
                self._coded = ctxcoder.ChunkEncoder((h.grid_height, h.grid_width), h.codebook_size)
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
        self._add(_RECORD.pack(kind, index, timestamp) + body)
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
        self._add(_RECORD.pack(GAP, self.frame_index, start) + _GAP.pack(stop, len(text)) + text)
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
        stored = len(payload) >= len(raw) and h.codec != "ctx"
        if stored:
            payload = raw
        head = _CHUNK.pack(CHUNK_MAGIC, self.chunk_index, self._first, self._frames, len(self._records), len(payload),
                           len(raw), CHUNK_STORED if stored else 0, 0)  # fmt: skip
        chunk = head + struct.pack("<II", zlib.crc32(head), zlib.crc32(payload)) + payload
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


def stream_stats(path: str | Path, *, expect_codebook_sha256: str | None = None) -> StreamStats:
    """Read a whole stream (raising EdgeError on damage) and measure it."""
    with TokenStreamReader(path, expect_codebook_sha256=expect_codebook_sha256) as reader:
        for _ in reader:
            pass
        reader.report.check()
        r = reader.report
        return StreamStats(reader._size, reader.data_offset, r.chunks, r.frames, r.keyframes, r.gaps,
                           reader.header.raw_bits_per_frame)  # fmt: skip
