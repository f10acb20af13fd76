"""Token stream ``.ptok``: the one definition of the file that holds a video's token ids. Byte layout: docs/PTOK.md.

    header   magic "PTOK", version, flags, codebook sha256, K, bits per id, grid h x w, fps, frame geometry,
             codec, keyframe interval, JSON metadata (<= 16 KiB), CRC-32
    chunk*   magic "PTKC", chunk index, first frame index, frame and record counts, lengths, flags, CRC-32 of the
             chunk header, CRC-32 of the payload; the payload (zlib / zstd / stored) is a run of records:
             keyframe (all ids packed at ceil(log2 K) bits), delta (change mask + changed ids, lossless, against the
             previous frame of the same chunk) or gap (the source stalled: from/to timestamps, reason).
             Version 2 (codec ctx): the records without their ids (zlib), then every id of the chunk context-coded
             by ctxcoder.py (lossless; the model restarts at each chunk). Version 3 (codec ctx with ``near``, what
             provq-run writes): the same, with the ids that no context predicts coded by their rank among the codes
             nearest the cell's previous one, so reading and writing it take the model's codebook.

Every chunk decodes on its own (its first frame is a keyframe). The writer appends each chunk with one write and an
fsync and never rewrites earlier bytes, so after a kill every complete chunk reads back; the reader stops at a torn
tail, and skips a damaged chunk by resyncing on the next chunk magic, listing what it skipped in ``reader.report``.

    codebook = load_codebook(manifest)                      # K x D float32 (edge_runtime/stable.py)
    with TokenStreamWriter("out.ptok", header, codebook=codebook) as w:   # header = StreamHeader(...), see below
        w.write(ids, timestamp_ms)                           # ids: h x w ints in [0, K)
    with TokenStreamReader("out.ptok", codebook=codebook) as r:
        for item in r:                                       # Frame(index, timestamp_ms, ids) or Gap(...)
            ...
        r.report.check()                                     # EdgeError naming damaged chunks, if any
"""

from __future__ import annotations

from .layout import (
    CHUNK_HEADER_SIZE,
    CHUNK_MAGIC,
    CODECS,
    FITS,
    MAGIC,
    MAX_METADATA_BYTES,
    VERSION,
    VERSIONS,
    StreamHeader,
    raw_bits_per_frame,
    zstandard,
)
from .reader import Damage, Frame, Gap, ReadReport, TokenStreamReader
from .stats import StreamStats, stream_stats
from .writer import TokenStreamWriter

__all__ = [
    "CHUNK_HEADER_SIZE", "CHUNK_MAGIC", "CODECS", "FITS", "MAGIC", "MAX_METADATA_BYTES", "VERSION", "VERSIONS",
    "Damage", "Frame", "Gap", "ReadReport", "StreamHeader", "StreamStats", "TokenStreamReader", "TokenStreamWriter",
    "raw_bits_per_frame", "stream_stats", "zstandard",
]  # fmt: skip
