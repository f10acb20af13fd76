"""The .ptok token stream: bit packing, exact round trips in every version, delta coding, refusals of bad input, and
the spec's worked example. The byte offsets used here come from docs/PTOK.md, so these tests also hold the spec to
the code. Damage, fuzzing, kill -9 and full disks: test_tokenstream_damage.py."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ptok_streams import (
    CODECS,
    OTHER_SHA,
    ROOT,
    SHA,
    codebook_of,
    env,
    frames_of,
    make_header,
    mostly_static,
    read,
    write,
)

from provq.edge_runtime import bitpack, tokenstream
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.tokenstream import (
    Gap,
    StreamHeader,
    TokenStreamReader,
    TokenStreamWriter,
    stream_stats,
)

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
    codebook = codebook_of(header)
    with TokenStreamWriter(path, header, frames_per_chunk=4, codebook=codebook) as wr:
        for i, ids in enumerate(frames):
            assert wr.write(ids, 33.5 * i) == i
            if i == 5:
                wr.write_gap(170.0, 2500.0, "rtsp reconnect")
    items, report = read(path, codebook, expect_codebook_sha256=header.codebook_sha256.upper())
    got = frames_of(items)
    assert [f.index for f in got] == list(range(len(frames)))
    assert [f.timestamp_ms for f in got] == [33.5 * i for i in range(len(frames))]
    for f, ids in zip(got, frames, strict=True):
        assert f.ids.dtype == np.int32 and f.ids.shape == (h, w)
        assert np.array_equal(f.ids, ids)
    assert items[6] == Gap(6, 170.0, 2500.0, "rtsp reconnect")
    assert report.ok and report.torn_tail_bytes == 0 and report.frames == len(frames) and report.gaps == 1
    with TokenStreamReader(path, codebook=codebook) as r:
        assert r.header == header
        assert r.header.version == {"ctx": 2, "ctx-v3": 3 if k <= 4096 else 2}.get(codec, 1)


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
    codec=st.sampled_from(["none", "zlib", "ctx", "ctx-v3"]),
    per_chunk=st.integers(1, 4),
    interval=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_random_streams_round_trip(  # noqa: PLR0917
    k: int, h: int, w: int, n: int, change: float, delta: bool, codec: str, per_chunk: int, interval: int, seed: int
) -> None:
    if codec == "ctx-v3":
        k = 2 + k % 4095  # version 3 up to K = 4096
    rng = np.random.default_rng(seed)
    frames, frame = [], rng.integers(0, k, (h, w))
    for _ in range(n):
        frame = np.where(rng.random((h, w)) < change, rng.integers(0, k, (h, w)), frame)
        frames.append(frame)
    header = make_header(k, h, w, codec=codec, delta=delta, keyframe_interval=interval)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.ptok"
        write(path, header, frames, frames_per_chunk=per_chunk, fsync=False)
        items, report = read(path, codebook_of(header))
    assert header.version == (3 if codec == "ctx-v3" else 2 if codec == "ctx" else 1)
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


# ---------------------------------------------------------------------------------------------- the spec's example


def test_spec_worked_example_matches_the_code(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "PTOK.md").read_text(encoding="utf-8")
    example = text[text.index("## Worked example") :]
    script = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    dump = re.search(r"```text\n(.*?)```", example, re.S).group(1)
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, env=env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == dump
    items, report = read(tmp_path / "example.ptok")
    assert [f.ids.tolist() for f in items] == [[[0, 1, 2], [3, 4, 0]], [[0, 1, 2], [3, 4, 4]]] and report.ok
    assert stream_stats(tmp_path / "example.ptok").total_bytes == 200
