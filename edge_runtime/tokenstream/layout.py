"""The ``.ptok`` byte layout (docs/PTOK.md): constants, the header and its parser. The one definition of the format
that readers and writers share.

    header   magic "PTOK", version, flags, codebook sha256, K, bits per id, grid h x w, fps, frame geometry,
             codec, keyframe interval, JSON metadata (<= 16 KiB), CRC-32
    chunk    magic "PTKC", chunk index, first frame index, frame and record counts, lengths, flags, CRC-32 of the
             chunk header, CRC-32 of the payload; then the payload (``CHUNK_STRUCT``, ``RECORD_STRUCT``, ``GAP_STRUCT``)
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from .. import bitpack
from ..errors import EdgeError

try:
    import zstandard
except ImportError:  # optional: only zstd streams need it
    zstandard = None

VERSION = 3  # written with codec ctx: ids coded against the codebook; 2: ctx without it; 1: the other codecs
VERSIONS = (1, 2, 3)  # read
MAGIC = b"PTOK"
CHUNK_MAGIC = b"PTKC"
CODECS = ("none", "zlib", "zstd", "ctx")  # header codec byte = index; ctx (context-coded ids): version 2 or 3
MAX_NEAR = 255  # version 3: the header's near byte, codes ranked per escaped id, 1 .. min(255, K - 1)
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

HEADER_STRUCT = struct.Struct("<4sHH32sIBBBBIId8I")  # fixed part, followed by the metadata and a CRC-32
CHUNK_STRUCT = struct.Struct("<4sIQIIIIHH")  # magic and ChunkHeader, followed by CHUNK_CRC_STRUCT
CHUNK_CRC_STRUCT = struct.Struct("<II")  # CRC-32 of the chunk header, CRC-32 of the payload
CRC_STRUCT = struct.Struct("<I")
RECORD_STRUCT = struct.Struct("<BQd")  # kind, frame index, timestamp ms
GAP_STRUCT = struct.Struct("<dB")  # to ms, reason length
CHUNK_HEADER_SIZE = CHUNK_STRUCT.size + CHUNK_CRC_STRUCT.size
DEFAULT_LEVEL = {"zlib": 6, "zstd": 3}
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
    near: int = 0  # codec ctx: escaped ids ranked among this many codes nearest the previous id (version 3), which
    # reading and writing need the codebook for; 0: version 2, no codebook needed

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
    def max_record_bytes(self) -> int:
        """The longest record a chunk of this stream can hold: a delta frame whose every id changed (mask and ids)
        or a gap with the longest reason."""
        cells = self.grid_height * self.grid_width
        frame = bitpack.packed_size(cells, 1) + bitpack.packed_size(cells, self.bits_per_id)
        return RECORD_STRUCT.size + max(frame, GAP_STRUCT.size + MAX_REASON_BYTES)

    @property
    def downsample(self) -> int:
        return self.model_height // self.grid_height

    @property
    def version(self) -> int:
        if self.codec != "ctx":
            return 1
        return 3 if self.near else 2

    def to_bytes(self) -> bytes:
        meta = _metadata_bytes(self.metadata)
        fixed = HEADER_STRUCT.pack(
            MAGIC, self.version, HEADER_DELTA if self.delta else 0, bytes.fromhex(self.codebook_sha256),
            self.codebook_size, self.bits_per_id, CODECS.index(self.codec), FITS.index(self.fit), self.near,
            self.grid_height, self.grid_width, self.fps, self.height, self.width, self.model_height,
            self.model_width, self.top, self.left, self.keyframe_interval, len(meta),
        )  # fmt: skip
        body = fixed + meta
        return body + CRC_STRUCT.pack(zlib.crc32(body))


class ChunkHeader(NamedTuple):
    """A chunk header's fields after the magic (``CHUNK_STRUCT``)."""

    index: int  # 0, 1, 2, ... in file order
    first_frame: int  # frame index of the chunk's first record
    frames: int  # frame records
    records: int  # frame and gap records, 1 .. MAX_RECORDS
    stored_len: int  # payload bytes in the file
    raw_len: int  # bytes of the records once decompressed
    flags: int  # CHUNK_STORED or 0
    reserved: int = 0  # always 0

    def to_bytes(self, payload: bytes) -> bytes:
        """The whole chunk: magic and header, the CRC-32s of both (``CHUNK_CRC_STRUCT``), then ``payload``."""
        head = CHUNK_STRUCT.pack(CHUNK_MAGIC, *self)
        return head + CHUNK_CRC_STRUCT.pack(zlib.crc32(head), zlib.crc32(payload)) + payload

    @classmethod
    def parse(cls, head: bytes) -> tuple[ChunkHeader, int] | None:
        """(header, payload CRC-32) from the first ``CHUNK_HEADER_SIZE`` bytes of a chunk (magic already checked);
        None when the header's CRC-32 does not match."""
        fixed = head[: CHUNK_STRUCT.size]
        head_crc, payload_crc = CHUNK_CRC_STRUCT.unpack_from(head, CHUNK_STRUCT.size)
        if zlib.crc32(fixed) != head_crc:
            return None
        return cls(*CHUNK_STRUCT.unpack(fixed)[1:]), payload_crc


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
    if not isinstance(h.near, int) or isinstance(h.near, bool) or h.near < 0:
        return f"near must be a whole number >= 0, got {h.near!r}"
    most = min(MAX_NEAR, h.codebook_size - 1)
    if h.near and (h.codec != "ctx" or h.near > most):
        return f"near {h.near} needs codec ctx and at most min({MAX_NEAR}, K - 1) = {most}"
    _metadata_bytes(h.metadata)
    return None


def read_exact(f: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes (fewer at the end of the file) from ``offset``."""
    f.seek(offset)
    return f.read(size)


def read_header(f: BinaryIO, file_size: int, path: Path) -> tuple[StreamHeader, int]:
    """Parse and check the header; returns it and the offset of the first chunk."""
    fixed = read_exact(f, 0, HEADER_STRUCT.size)
    if fixed[:4] != MAGIC:
        raise EdgeError(f"{path} is not a provq token stream (no PTOK magic): pass a .ptok file written by provq-run")
    if len(fixed) < HEADER_STRUCT.size:
        raise EdgeError(f"{path}: token stream header is truncated ({file_size} bytes): the file is incomplete")
    (_, version, flags, sha, k, bits, codec, fit, near, gh, gw, fps, height, width, mh, mw, top, left,
     kf_interval, meta_len) = HEADER_STRUCT.unpack(fixed)  # fmt: skip
    if version not in VERSIONS:
        raise EdgeError(f"{path} is token stream version {version}; this provq reads versions 1 to 3: upgrade provq")
    end = HEADER_STRUCT.size + meta_len + CRC_STRUCT.size
    if meta_len > MAX_METADATA_BYTES or end > file_size:
        raise EdgeError(f"{path}: token stream header claims {meta_len} metadata bytes: the header is damaged")
    rest = read_exact(f, HEADER_STRUCT.size, meta_len + CRC_STRUCT.size)
    (crc,) = CRC_STRUCT.unpack_from(rest, meta_len)
    if zlib.crc32(fixed + rest[:meta_len]) != crc:
        raise EdgeError(f"{path}: token stream header CRC mismatch: the header is damaged, the stream is unreadable")
    if flags & ~HEADER_DELTA or (near and version != 3) or codec >= len(CODECS) or fit >= len(FITS):
        raise EdgeError(f"{path}: token stream header has unknown flags or codes: written by a newer provq? upgrade")
    try:
        metadata = json.loads(rest[:meta_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EdgeError(f"{path}: token stream metadata is not valid JSON: the header is damaged") from None
    header = StreamHeader(
        sha.hex(), k, gh, gw, height, width, mh, mw, FITS[fit], top, left, fps, CODECS[codec],
        bool(flags & HEADER_DELTA), kf_interval, metadata, near,
    )  # fmt: skip
    if version != header.version:
        raise EdgeError(f"{path}: version {version} with codec {header.codec}: the header is damaged")
    if bits != header.bits_per_id:
        raise EdgeError(f"{path}: header says {bits} bits per id but K = {k} needs {header.bits_per_id}: damaged")
    return header, end
