"""The .ptok token stream under damage: torn tails at every offset, bit flips, fuzzed bytes, huge length claims,
kill -9 mid-write, a file size limit and a full disk. Byte offsets from docs/PTOK.md."""

from __future__ import annotations

import errno
import os
import random
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from ptok_streams import (
    HAVE_ZSTD,
    SHA,
    chunk_spans,
    codebook_for,
    codebook_of,
    env,
    make_header,
    mostly_static,
    overwrite,
    read,
    write,
)

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.tokenstream import (
    Frame,
    TokenStreamReader,
    TokenStreamWriter,
)

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
    kinds = [(2, 1, 1, "none"), (1025, 3, 5, "zlib"), (16384, 4, 4, "none"), (300, 4, 5, "ctx")]
    kinds += [(1025, 4, 5, "ctx-v3")] + [(300, 2, 7, "zstd")] * HAVE_ZSTD
    for i, (k, h, w, codec) in enumerate(kinds):
        path = tmp_path / f"seed{i}.ptok"
        frames = mostly_static(k, h, w, 9, changes=1, seed=i)
        header = make_header(k, h, w, codec=codec)
        with TokenStreamWriter(path, header, frames_per_chunk=3, fsync=False, codebook=codebook_of(header)) as wr:
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
            with TokenStreamReader(path, codebook=codebook_for(1025)) as r:  # the version 3 seed's
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


@pytest.mark.parametrize("trial", range(5))
def test_kill_9_keeps_every_complete_chunk(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "live.ptok"
    codec = ["none", "zlib", "ctx"][trial % 3]
    code = CHILD.format(sha=SHA, codec=codec)
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=env())
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
        [sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True, env=env()
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
