"""The .ptok token stream: exact round trips, delta coding, codebook refusal, torn tails, damage, fuzzing, kill -9
and a full disk. The byte offsets used here come from docs/PTOK.md, so these tests also hold the spec to the code."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provq.edge_runtime import bitpack, tokenstream
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.tokenstream import (
    Frame,
    Gap,
    StreamHeader,
    TokenStreamReader,
    TokenStreamWriter,
    stream_stats,
)

ROOT = Path(__file__).resolve().parents[1]
SHA = hashlib.sha256(b"codebook A").hexdigest()
OTHER_SHA = hashlib.sha256(b"codebook B").hexdigest()
HAVE_ZSTD = tokenstream.zstandard is not None
CODECS = [
    "ctx",
    "none",
    "zlib",
    pytest.param("zstd", marks=pytest.mark.skipif(not HAVE_ZSTD, reason="zstandard is not installed (provq[edge])")),
]


def make_header(k: int = 1024, h: int = 4, w: int = 6, **kw: object) -> StreamHeader:
    """A header for an h x w grid of a downsample-8 model on frames of exactly the model size."""
    return StreamHeader(SHA, k, h, w, 8 * h, 8 * w, 8 * h, 8 * w, **kw)


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
    with TokenStreamWriter(path, header, **kw) as w:
        for i, ids in enumerate(frames):
            w.write(ids, 40.0 * i)


def read(path: Path, **kw: object) -> tuple[list[Frame | Gap], tokenstream.ReadReport]:
    with TokenStreamReader(path, **kw) as r:
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


# ---------------------------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize(("k", "bits"), [(2, 1), (3, 2), (4, 2), (5, 3), (1024, 10), (1025, 11), (16384, 14)])
def test_bits_per_id_is_ceil_log2_k(k: int, bits: int) -> None:
    assert bitpack.bits_for(k) == bits
    assert tokenstream.raw_bits_per_frame(3, 5, k) == 15 * bits


def test_bit_order_is_the_documented_little_endian_order() -> None:
    assert bitpack.pack(np.array([1, 2, 3]), 2) == b"\x39"
    assert bitpack.pack(np.array([0, 1, 2, 3, 4, 0]), 3) == b"\x88\x46\x00"
    assert bitpack.pack(np.array([0x3FF, 0]), 10) == b"\xff\x03\x00"
    assert bitpack.pack_mask(np.array([0, 0, 0, 0, 0, 1], bool)) == b"\x20"


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 30), count=st.integers(0, 200_000 // 30), seed=st.integers(0, 2**32 - 1))
def test_bitpack_round_trips(bits: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << bits, count)
    data = bitpack.pack(values, bits)
    assert len(data) == bitpack.packed_size(count, bits)
    assert np.array_equal(bitpack.unpack(data, bits, count), values)


def test_bitpack_crosses_slab_boundaries() -> None:
    values = np.random.default_rng(1).integers(0, 1 << 11, 3 * (1 << 16) + 5)
    assert np.array_equal(bitpack.unpack(bitpack.pack(values, 11), 11, values.size), values)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (32, 32)])
@pytest.mark.parametrize("k", [2, 3, 1024, 1025, 16384])
def test_round_trip_is_exact(tmp_path: Path, k: int, grid: tuple[int, int], delta: bool, codec: str) -> None:
    h, w = grid
    header = make_header(k, h, w, codec=codec, delta=delta, fps=29.97, metadata={"preset": "tiny", "uri": "x"})
    frames = mostly_static(k, h, w, 5, changes=2) + mostly_static(k, h, w, 3, changes=h * w, seed=1)
    frames += [np.full((h, w), k - 1, dtype=np.uint16), np.zeros((h, w), dtype=np.int8)]
    path = tmp_path / "s.ptok"
    with TokenStreamWriter(path, header, frames_per_chunk=4) as wr:
        for i, ids in enumerate(frames):
            assert wr.write(ids, 33.5 * i) == i
            if i == 5:
                wr.write_gap(170.0, 2500.0, "rtsp reconnect")
    items, report = read(path, expect_codebook_sha256=SHA.upper())
    got = frames_of(items)
    assert [f.index for f in got] == list(range(len(frames)))
    assert [f.timestamp_ms for f in got] == [33.5 * i for i in range(len(frames))]
    for f, ids in zip(got, frames, strict=True):
        assert f.ids.dtype == np.int32 and f.ids.shape == (h, w)
        assert np.array_equal(f.ids, ids)
    assert items[6] == Gap(6, 170.0, 2500.0, "rtsp reconnect")
    assert report.ok and report.torn_tail_bytes == 0 and report.frames == len(frames) and report.gaps == 1
    with TokenStreamReader(path) as r:
        assert r.header == header


def test_geometry_and_metadata_survive(tmp_path: Path) -> None:
    metadata = {"preset": "small", "source": "rtsp://cam/1", "ü": [1, 2]}
    header = StreamHeader(SHA, 512, 30, 40, 250, 330, 240, 320, fit="crop", top=5, left=5, fps=15.0,
                          keyframe_interval=7, metadata=metadata)  # fmt: skip
    write(tmp_path / "s.ptok", header, mostly_static(512, 30, 40, 3, 1))
    with TokenStreamReader(tmp_path / "s.ptok") as r:
        assert r.header == header and r.header.downsample == 8


def test_fit_names_match_preprocess() -> None:
    from provq.edge_runtime.preprocess import FITS, Geometry

    assert tokenstream.FITS == FITS
    geometry = Geometry.plan(250, 330, 8, "crop")
    header = StreamHeader(SHA, 512, 31, 41, **dataclasses.asdict(geometry))
    assert (header.model_height, header.model_width, header.top, header.left) == (248, 328, 1, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(2, 70_000),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    n=st.integers(1, 7),
    change=st.floats(0.0, 1.0),
    delta=st.booleans(),
    codec=st.sampled_from(["none", "zlib", "ctx"]),
    per_chunk=st.integers(1, 4),
    interval=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_random_streams_round_trip(  # noqa: PLR0917
    k: int, h: int, w: int, n: int, change: float, delta: bool, codec: str, per_chunk: int, interval: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    frames, frame = [], rng.integers(0, k, (h, w))
    for _ in range(n):
        frame = np.where(rng.random((h, w)) < change, rng.integers(0, k, (h, w)), frame)
        frames.append(frame)
    header = make_header(k, h, w, codec=codec, delta=delta, keyframe_interval=interval)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.ptok"
        write(path, header, frames, frames_per_chunk=per_chunk, fsync=False)
        items, report = read(path)
    assert report.ok and report.chunks == -(-n // per_chunk)
    assert [f.index for f in items] == list(range(n))
    assert all(np.array_equal(f.ids, ids) for f, ids in zip(items, frames, strict=True))


# ---------------------------------------------------------------------------------------------- delta coding


def test_static_scene_is_lossless_and_small(tmp_path: Path) -> None:
    k, h, w, n = 1024, 32, 32, 300
    frames = mostly_static(k, h, w, n, changes=4)
    sizes = {}
    codings = {"delta+zlib": {"codec": "zlib"}, "delta": {"codec": "none"}, "raw": {"codec": "none", "delta": False}}
    for name, kw in codings.items():
        path = tmp_path / f"{name}.ptok"
        write(path, make_header(k, h, w, **kw), frames, frames_per_chunk=30)
        got = frames_of(read(path)[0])
        assert len(got) == n and all(np.array_equal(f.ids, ids) for f, ids in zip(got, frames, strict=True))
        sizes[name] = stream_stats(path)
    raw = sizes["raw"]
    assert raw.raw_bits_per_frame == 32 * 32 * 10 and raw.keyframes == n
    assert 1.0 < raw.ratio < 1.05  # raw packing plus headers
    assert sizes["delta"].keyframes == n // 30  # one per chunk
    assert sizes["delta"].ratio < 0.30
    assert sizes["delta+zlib"].ratio < 0.10
    print({name: round(s.bytes_per_frame, 1) for name, s in sizes.items()}, raw.raw_bits_per_frame // 8)


def test_keyframes_follow_the_interval_and_busy_frames(tmp_path: Path) -> None:
    frames = mostly_static(1024, 8, 8, 10, changes=1)
    write(tmp_path / "a.ptok", make_header(1024, 8, 8, keyframe_interval=3), frames, frames_per_chunk=10)
    assert stream_stats(tmp_path / "a.ptok").keyframes == 4  # frames 0, 3, 6, 9
    busy = list(np.random.default_rng(0).integers(0, 1024, (10, 8, 8)))  # all new: a delta would be larger
    write(tmp_path / "b.ptok", make_header(1024, 8, 8, codec="zlib"), busy, frames_per_chunk=10)
    assert stream_stats(tmp_path / "b.ptok").keyframes == 10  # version 1 codings fall back to keyframes


# ---------------------------------------------------------------------------------------------- refusals


def test_foreign_codebook_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "s.ptok", make_header(), mostly_static(1024, 4, 6, 2, 1))
    with pytest.raises(EdgeError) as err:
        TokenStreamReader(tmp_path / "s.ptok", expect_codebook_sha256=OTHER_SHA)
    message = str(err.value)
    assert SHA[:12] in message and OTHER_SHA[:12] in message and "decode it with" in message and "\n" not in message


@pytest.mark.parametrize(
    ("ids", "words"),
    [
        (np.full((4, 6), 1024), "outside [0, 1024)"),
        (np.full((4, 6), -1), "outside [0, 1024)"),
        (np.zeros((6, 4), int), "shape (6, 4)"),
        (np.zeros((4, 6, 1), int), "shape"),
        (np.zeros((4, 6), float), "dtype float64"),
    ],
)
def test_bad_ids_raise_one_line(tmp_path: Path, ids: np.ndarray, words: str) -> None:
    with TokenStreamWriter(tmp_path / "s.ptok", make_header()) as w:
        w.write(np.zeros((4, 6), int), 0.0)
        with pytest.raises(EdgeError, match=re.escape(words)) as err:
            w.write(ids, 1.0)
        assert "\n" not in str(err.value)
    assert len(frames_of(read(tmp_path / "s.ptok")[0])) == 1


def test_bad_timestamps_and_gap_reasons_raise(tmp_path: Path) -> None:
    with TokenStreamWriter(tmp_path / "s.ptok", make_header()) as w:
        with pytest.raises(EdgeError, match="timestamp_ms must be a finite number"):
            w.write(np.zeros((4, 6), int), float("nan"))
        with pytest.raises(EdgeError, match="over the 255-byte limit"):
            w.write_gap(0.0, 1.0, "x" * 256)
        with pytest.raises(EdgeError, match="to_ms must be a finite number"):
            w.write_gap(0.0, "later")  # type: ignore[arg-type]
    with pytest.raises(EdgeError, match="is closed"):
        w.write(np.zeros((4, 6), int), 0.0)


@pytest.mark.parametrize(
    "kw",
    [
        {"codebook_sha256": "abc"},
        {"codebook_size": 1},
        {"grid_height": 0},
        {"model_height": 33},
        {"fit": "stretch"},
        {"top": 1},
        {"fps": float("nan")},
        {"codec": "lz4"},
        {"metadata": {"blob": "x" * 20_000}},
        {"metadata": {"f": object()}},
    ],
)
def test_invalid_headers_are_refused(kw: dict[str, object]) -> None:
    fields = dataclasses.asdict(make_header())
    with pytest.raises(EdgeError):
        StreamHeader(**{**fields, **kw})


def test_existing_file_needs_append_and_a_matching_header(tmp_path: Path) -> None:
    path = tmp_path / "s.ptok"
    write(path, make_header(), mostly_static(1024, 4, 6, 3, 1))
    with pytest.raises(EdgeError, match="already exists"):
        TokenStreamWriter(path, make_header())
    with pytest.raises(EdgeError, match="grid_height is 4, not 5"):
        TokenStreamWriter(path, make_header(1024, 5, 6), append=True)
    with pytest.raises(EdgeError, match="made with codebook"):
        TokenStreamWriter(path, dataclasses.replace(make_header(), codebook_sha256=OTHER_SHA), append=True)
    with TokenStreamWriter(path, make_header(metadata={"note": "resumed"}), append=True) as w:
        with pytest.raises(EdgeError, match="another process"):
            TokenStreamWriter(path, make_header(), append=True)
        assert w.write(np.zeros((4, 6), int), 999.0) == 3
    items, report = read(path)
    assert [f.index for f in items] == [0, 1, 2, 3] and report.chunks == 2 and report.ok


def test_not_a_stream(tmp_path: Path) -> None:
    (tmp_path / "x.ptok").write_bytes(b"hello world")
    with pytest.raises(EdgeError, match="not a provq token stream"):
        TokenStreamReader(tmp_path / "x.ptok")
    with pytest.raises(EdgeError, match="does not exist"):
        TokenStreamReader(tmp_path / "missing.ptok")


# ---------------------------------------------------------------------------------------------- torn tails and damage


def test_torn_tail_at_every_offset_of_the_last_chunk(tmp_path: Path) -> None:
    frames = mostly_static(1025, 8, 8, 10, changes=3)
    full = tmp_path / "full.ptok"
    write(full, make_header(1025, 8, 8), frames, frames_per_chunk=4)  # chunks of 4, 4, 2 frames
    data = full.read_bytes()
    start, end = chunk_spans(data)[-1]
    assert end == len(data)
    cut = tmp_path / "cut.ptok"
    for size in range(start, end):
        overwrite(cut, data[:size])
        items, report = read(cut)
        assert [f.index for f in items] == list(range(8))
        assert all(np.array_equal(f.ids, frames[f.index]) for f in items)
        assert report.ok and report.torn_tail_bytes == size - start and report.chunks == 2
    # resuming cuts off the torn tail and carries on with the next chunk and frame numbers
    with TokenStreamWriter(cut, make_header(1025, 8, 8), append=True) as w:
        assert w.truncated_bytes == end - 1 - start
        for ids in frames[8:]:
            w.write(ids, 1.0)
    items, report = read(cut)
    assert report.ok and report.torn_tail_bytes == 0 and report.chunks == 3
    assert all(np.array_equal(f.ids, frames[i]) for i, f in enumerate(items)) and len(items) == 10


@pytest.mark.parametrize("codec", ["none", "zlib"])
def test_bit_flips_name_the_chunk_and_spare_the_others(tmp_path: Path, codec: str) -> None:
    frames = mostly_static(1024, 6, 6, 15, changes=2)
    clean = tmp_path / "clean.ptok"
    write(clean, make_header(1024, 6, 6, codec=codec), frames, frames_per_chunk=3)  # chunks 0..4
    data = clean.read_bytes()
    spans = chunk_spans(data)
    rng = random.Random(7)
    bad = tmp_path / "bad.ptok"
    for chunk, (start, end) in enumerate(spans):
        for offset in [start, start + 5, start + 30, start + 38, start + 42, *rng.sample(range(start + 44, end), 4)]:
            flipped = bytearray(data)
            flipped[offset] ^= 1 << rng.randrange(8)
            overwrite(bad, bytes(flipped))
            items, report = read(bad)
            assert [f.index for f in items] == [i for i in range(15) if i // 3 != chunk], offset
            assert all(np.array_equal(f.ids, frames[f.index]) for f in items)
            assert len(report.damaged) == 1
            damage = report.damaged[0]
            assert damage.first_chunk == chunk and damage.last_chunk in (chunk, None)
            assert damage.offset == start and damage.length == end - start
            with pytest.raises(EdgeError, match=f"chunk {chunk}\\b"):
                report.check()


def test_damage_summary_lists_runs_and_the_torn_tail(tmp_path: Path) -> None:
    frames = mostly_static(1024, 4, 6, 18, changes=1)
    write(tmp_path / "s.ptok", make_header(), frames, frames_per_chunk=3)  # chunks 0..5
    data = bytearray((tmp_path / "s.ptok").read_bytes())
    spans = chunk_spans(bytes(data))
    for chunk in (1, 2):  # two neighbours with broken headers: one run
        data[spans[chunk][0] + 10] ^= 0xFF
    data[spans[4][1] - 1] ^= 0x01  # chunk 4's payload
    data += data[spans[5][0] : spans[5][0] + 20]  # and a torn copy at the end
    (tmp_path / "s.ptok").write_bytes(bytes(data))
    items, report = read(tmp_path / "s.ptok")
    assert [f.index for f in items] == [0, 1, 2, 9, 10, 11, 15, 16, 17]
    assert [(d.first_chunk, d.last_chunk) for d in report.damaged] == [(1, 2), (4, 4)]
    assert report.torn_tail_bytes == 20
    summary = report.summary()
    assert "chunks 1-2" in summary and "chunk 4 (payload CRC mismatch" in summary and "torn tail: 20 bytes" in summary
    with pytest.raises(EdgeError, match=r"chunks 1-2 .*chunk 4"):
        report.check()


def test_header_damage_is_one_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "s.ptok", make_header(), mostly_static(1024, 4, 6, 2, 1))
    data = bytearray((tmp_path / "s.ptok").read_bytes())
    data[50] ^= 4
    (tmp_path / "s.ptok").write_bytes(bytes(data))
    with pytest.raises(EdgeError, match="header CRC mismatch"):
        TokenStreamReader(tmp_path / "s.ptok")


# ---------------------------------------------------------------------------------------------- fuzzing


def _fix_header_crc(data: bytearray) -> None:
    (meta_len,) = struct.unpack_from("<I", data, 92)
    if 96 + meta_len + 4 <= len(data):
        struct.pack_into("<I", data, 96 + meta_len, zlib.crc32(bytes(data[: 96 + meta_len])))


def _fix_chunk_crcs(data: bytearray, start: int) -> None:
    if start + 44 <= len(data):
        struct.pack_into("<I", data, start + 36, zlib.crc32(bytes(data[start : start + 36])))
        (stored,) = struct.unpack_from("<I", data, start + 24)
        payload = bytes(data[start + 44 : start + 44 + stored])
        struct.pack_into("<I", data, start + 40, zlib.crc32(payload))


HEADER_FIELDS = [(4, "<H"), (6, "<H"), (40, "<I"), (44, "<B"), (45, "<B"), (46, "<B"), (47, "<B"), (48, "<I"),
                 (52, "<I"), (56, "<d"), (64, "<I"), (72, "<I"), (80, "<I"), (88, "<I"), (92, "<I")]  # fmt: skip


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    spans = chunk_spans(seed)
    start, end = rng.choice(spans)
    choice = rng.randrange(10)
    if choice == 0:  # random bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncation
        del data[rng.randrange(len(data)) :]
    elif choice == 2:  # insert or delete a run of bytes
        at = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            del data[at : at + rng.randint(1, 64)]
    elif choice == 3:  # duplicate, drop or swap whole chunks
        body = [bytes(seed[s:e]) for s, e in spans]
        rng.shuffle(body)
        body = body[: rng.randint(0, len(body))] + [rng.choice(body)] * rng.randint(0, 2) if body else body
        data = bytearray(seed[: spans[0][0]] + b"".join(body))
    elif choice == 4:  # a header field set to an extreme value, CRC fixed so validation must catch it
        offset, fmt = rng.choice(HEADER_FIELDS)
        if fmt == "<d":
            value: float = rng.choice([-1.0, 1e308, float("inf")])
        else:
            value = rng.choice([0, 1, 2, 3, 255, 2**16 - 1, 2**32 - 1]) % (1 << (8 * struct.calcsize(fmt)))
        struct.pack_into(fmt, data, offset, value)
        _fix_header_crc(data)
    elif choice == 5:  # a chunk header field set to an extreme value, CRCs fixed
        offset, fmt = rng.choice([(4, "<I"), (8, "<Q"), (16, "<I"), (20, "<I"), (24, "<I"), (28, "<I"), (32, "<H")])
        limit = {"<H": 2**16 - 1, "<I": 2**32 - 1, "<Q": 2**64 - 1}[fmt]
        struct.pack_into(fmt, data, start + offset, rng.choice([0, 1, 2, 3, 1000, limit, rng.randint(0, limit)]))
        _fix_chunk_crcs(data, start)
    elif choice == 6:  # payload bytes scrambled, CRCs fixed: the record decoder sees garbage
        for _ in range(rng.randint(1, 6)):
            if end > start + 44:
                data[rng.randrange(start + 44, end)] = rng.randrange(256)
        _fix_chunk_crcs(data, start)
    elif choice == 7:  # a payload replaced by a valid zlib stream of random records, lengths and CRCs fixed
        raw = rng.randbytes(rng.randint(0, 300))
        if rng.random() < 0.5:
            raw = bytes([rng.choice([0, 1, 2, 9])]) + raw
        payload = zlib.compress(raw)
        head = bytearray(data[start : start + 44])
        struct.pack_into("<III", head, 20, rng.randint(1, 4), len(payload), len(raw))
        struct.pack_into("<H", head, 32, 0)
        data[start:end] = head + payload
        _fix_chunk_crcs(data, start)
    elif choice == 8:  # pure noise after a valid header
        data = bytearray(seed[: spans[0][0]]) + rng.randbytes(rng.randint(0, 400))
    else:  # noise that starts like a chunk
        data = bytearray(seed[: spans[0][0]]) + b"PTKC" + rng.randbytes(rng.randint(0, 200))
    return bytes(data)


def _fuzz(tmp_path: Path, cases: int, seed: int) -> dict[str, int]:
    seeds = []
    kinds = [(2, 1, 1, "none"), (1025, 3, 5, "zlib"), (16384, 4, 4, "none")] + [(300, 2, 7, "zstd")] * HAVE_ZSTD
    for i, (k, h, w, codec) in enumerate(kinds):
        path = tmp_path / f"seed{i}.ptok"
        frames = mostly_static(k, h, w, 9, changes=1, seed=i)
        with TokenStreamWriter(path, make_header(k, h, w, codec=codec), frames_per_chunk=3, fsync=False) as wr:
            for j, ids in enumerate(frames):
                wr.write(ids, float(j))
                if j == 4:
                    wr.write_gap(4.0, 9.0, "stall")
        seeds.append(path.read_bytes())
    rng = random.Random(seed)
    path = tmp_path / "fuzz.ptok"
    outcomes = {"refused": 0, "read": 0, "damaged": 0}
    for case in range(cases):
        data = rng.randbytes(rng.randint(0, 300)) if case % 20 == 0 else _mutate(rng, rng.choice(seeds))
        overwrite(path, data)
        try:
            with TokenStreamReader(path) as r:
                for item in r:
                    if isinstance(item, Frame):
                        assert item.ids.shape == (r.header.grid_height, r.header.grid_width)
                        assert item.ids.min() >= 0 and item.ids.max() < r.header.codebook_size
                outcomes["damaged" if r.report.damaged else "read"] += 1
        except EdgeError as err:
            assert "\n" not in str(err)
            outcomes["refused"] += 1
    return outcomes


def test_fuzz_reader_raises_only_edge_errors(tmp_path: Path) -> None:
    outcomes = _fuzz(tmp_path, cases=3000, seed=1)
    assert min(outcomes.values()) > 100, outcomes  # every kind of outcome is exercised


@pytest.mark.slow
@pytest.mark.skipif("PTOK_FUZZ_CASES" not in os.environ, reason="long fuzz: set PTOK_FUZZ_CASES=100000 to run it")
def test_fuzz_reader_long(tmp_path: Path) -> None:
    outcomes = _fuzz(
        tmp_path, cases=int(os.environ["PTOK_FUZZ_CASES"]), seed=int(os.environ.get("PTOK_FUZZ_SEED", "2"))
    )
    print(outcomes)


def _header_bytes(**kw: object) -> bytearray:
    return bytearray(make_header(**kw).to_bytes())


HUGE_HEADER_FIELDS = {"metadata": (92, 2**32 - 1), "grid": (48, 65535), "codebook": (40, 2**32 - 1)}
HUGE_CHUNK_FIELDS = {  # record count, stored length, raw length
    "chunk lengths": (2**32 - 1, 2**32 - 1, 2**32 - 1),
    "chunk payload past the end": (3, 60 << 20, 100),
    "zlib bomb": (1, 0, 100),
    "zlib bomb, raw length 0": (1, 0, 0),  # zlib reads a limit of 0 as no limit
}


def _huge_claim(name: str) -> bytes:
    """A file whose header or first chunk claims a huge size, with valid CRCs."""
    if name in HUGE_HEADER_FIELDS:
        offset, value = HUGE_HEADER_FIELDS[name]
        data = _header_bytes()
        struct.pack_into("<I", data, offset, value)
        struct.pack_into("<I", data, offset + 4, value)
        _fix_header_crc(data)
        return bytes(data) + b"\0" * 64
    records, stored, raw = HUGE_CHUNK_FIELDS[name]
    payload = zlib.compress(b"\0" * (50 << 20), 9) if name.startswith("zlib bomb") else b"\0" * 16
    head = bytearray(b"PTKC" + b"\0" * 40)
    struct.pack_into("<IIII", head, 16, 1, records, stored or len(payload), raw)
    chunk = bytearray(head + payload)
    _fix_chunk_crcs(chunk, 0)
    return make_header(codec="zlib").to_bytes() + bytes(chunk)


@pytest.mark.parametrize("name", [*HUGE_HEADER_FIELDS, *HUGE_CHUNK_FIELDS])
def test_huge_claims_allocate_nothing_large(tmp_path: Path, name: str) -> None:
    path = tmp_path / "huge.ptok"
    path.write_bytes(_huge_claim(name))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with TokenStreamReader(path) as r:
            items = list(r)
            assert not items and (r.report.damaged or r.report.torn_tail_bytes)
    except EdgeError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 2 * size + (4 << 20), (name, peak)


# ---------------------------------------------------------------------------------------------- crashes and full disks

CHILD = """
import sys, numpy as np
from provq.edge_runtime.tokenstream import StreamHeader, TokenStreamWriter
K, H, W = 1025, 48, 64
def frame(i):
    ids = np.random.default_rng(0).integers(0, K, (H, W))
    ids.flat[np.random.default_rng(i + 1).integers(0, H * W, 40)] = (i * 31 + np.arange(40)) % K
    return ids
header = StreamHeader("{sha}", K, H, W, 8 * H, 8 * W, 8 * H, 8 * W, codec="{codec}")
with TokenStreamWriter(sys.argv[1], header, frames_per_chunk=1000) as w:
    print("ready", flush=True)
    i = 0
    while True:
        w.write(frame(i), i * 40.0)
        i += 1
        if i % 3 == 0:
            w.flush()
            print(i, flush=True)
"""


def _child_frame(i: int, k: int = 1025, h: int = 48, w: int = 64) -> np.ndarray:
    ids = np.random.default_rng(0).integers(0, k, (h, w))
    ids.flat[np.random.default_rng(i + 1).integers(0, h * w, 40)] = (i * 31 + np.arange(40)) % k
    return ids


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.parametrize("trial", range(5))
def test_kill_9_keeps_every_complete_chunk(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "live.ptok"
    codec = ["none", "zlib", "ctx"][trial % 3]
    code = CHILD.format(sha=SHA, codec=codec)
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=_env())
    assert child.stdout.readline().strip() == "ready"
    time.sleep(random.Random(trial).uniform(0.0, 0.3))
    child.send_signal(signal.SIGKILL)
    logged = [int(line) for line in child.stdout.read().split()]
    child.wait()
    assert child.returncode == -signal.SIGKILL
    confirmed = logged[-1] if logged else 0
    items, report = read(path, expect_codebook_sha256=SHA)
    assert report.ok, report.summary()
    n = len(items)
    assert confirmed <= n <= confirmed + 3 and n % 3 == 0  # at most the chunk whose log line the kill swallowed
    for i, f in enumerate(items):
        assert f.index == i and f.timestamp_ms == i * 40.0 and np.array_equal(f.ids, _child_frame(i))
    with TokenStreamWriter(path, make_header(1025, 48, 64, codec=codec), append=True) as w:
        w.write(_child_frame(n), n * 40.0)
    items, report = read(path)
    assert report.ok and report.torn_tail_bytes == 0 and [f.index for f in items] == list(range(n + 1))


def test_file_size_limit_gives_a_clear_error_and_a_readable_stream(tmp_path: Path) -> None:
    path = tmp_path / "full.ptok"
    code = f"""
import resource, signal, sys, numpy as np
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.tokenstream import StreamHeader, TokenStreamWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
w = TokenStreamWriter(sys.argv[1], StreamHeader("{SHA}", 1024, 16, 16, 128, 128, 128, 128, codec="none"),
                      frames_per_chunk=2)
try:
    for i in range(1000):
        w.write(np.full((16, 16), i % 1024), float(i))
        if w._frames == 0:
            print("flushed", i + 1, flush=True)
except EdgeError as err:
    print("error", err)
    w.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("error ") and "file size limit" in lines[-1] and "are intact" in lines[-1]
    flushed = int(lines[-2].split()[1])
    items, report = read(path)
    assert report.ok and report.torn_tail_bytes == 0, report.summary()
    assert [f.index for f in items] == list(range(flushed)) and path.stat().st_size <= 20000


def test_disk_full_truncates_the_partial_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.ptok"
    frames = mostly_static(1024, 8, 8, 7, changes=64)
    writer = TokenStreamWriter(path, make_header(1024, 8, 8, codec="none"), frames_per_chunk=2)
    real_write, budget = os.write, [300]

    def full_disk(fd: int, data: bytes) -> int:
        if fd != writer._fd:
            return real_write(fd, data)
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: budget[0]]))  # a short write, as a filling disk gives
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(EdgeError) as err:
        for i, ids in enumerate(frames):
            writer.write(ids, float(i))
    message = str(err.value)
    assert "disk is full" in message and "chunk 1 (2 frames from frame 2) was not written" in message
    assert "the 1 chunks before it are intact" in message and "\n" not in message
    with pytest.raises(EdgeError, match="closed"):
        writer.write(frames[0], 9.0)
    writer.close()
    monkeypatch.undo()
    items, report = read(path)
    assert report.ok and report.torn_tail_bytes == 0 and [f.index for f in items] == [0, 1]
    assert all(np.array_equal(f.ids, frames[f.index]) for f in items)


# ---------------------------------------------------------------------------------------------- the spec's example


def test_spec_worked_example_matches_the_code(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "PTOK.md").read_text(encoding="utf-8")
    example = text[text.index("## Worked example") :]
    script = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    dump = re.search(r"```text\n(.*?)```", example, re.S).group(1)
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == dump
    items, report = read(tmp_path / "example.ptok")
    assert [f.ids.tolist() for f in items] == [[[0, 1, 2], [3, 4, 0]], [[0, 1, 2], [3, 4, 4]]] and report.ok
    assert stream_stats(tmp_path / "example.ptok").total_bytes == 200
