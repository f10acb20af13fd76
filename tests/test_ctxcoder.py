"""Codec ctx (.ptok versions 2 and 3) and stable tokens on real model ids: exact round trips, chunk independence,
the version-1 codings, damage, the codebook a version 3 stream needs, and the size of a static scene made from a
real photo with sensor noise."""

from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from provq.edge_runtime import ctxcoder, rans
from provq.edge_runtime.backends import open_backend
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import default_model_dir, load_manifest
from provq.edge_runtime.preprocess import prepare
from provq.edge_runtime.stable import DEFAULT_MARGIN, StableTokens, load_codebook
from provq.edge_runtime.tokenstream import (
    CHUNK_HEADER_SIZE,
    StreamHeader,
    TokenStreamReader,
    TokenStreamWriter,
    stream_stats,
)

PHOTO = default_model_dir().parent / "sample" / "images" / "china.jpg"
FRAMES = 16


@pytest.fixture(scope="module")
def static_scene() -> dict[str, np.ndarray]:
    """A static camera made from a real photo: 16 frames of china.jpg at 384 x 288 with Gaussian sensor noise
    (sigma 2.5 levels) and a slow 0.4% gain drift, through the shipped model (FP32): ids and latents."""
    backend = open_backend("default", "onnxruntime", "fp32", latents=True)
    image = cv2.resize(cv2.imread(str(PHOTO)), (384, 288), interpolation=cv2.INTER_AREA).astype(np.float32)
    rng = np.random.default_rng(3)
    ids, latents, plain = [], [], []
    for t in range(FRAMES):
        frame = np.clip(image * (1 + 0.004 * np.sin(t / 5)) + rng.normal(0, 2.5, image.shape), 0, 255)
        x, _ = prepare(frame.astype(np.uint8), backend.manifest.downsample, "pad")
        i, z = backend.encode_latents(x)
        ids.append(i[0])
        latents.append(z[0])
        plain.append(backend.encode(x)[0])
    backend.close()
    return {"ids": np.stack(ids), "latents": np.stack(latents), "plain": np.stack(plain)}


CODEBOOK = load_codebook(load_manifest("default"))  # K x D float32


def _header(ids: np.ndarray, codec: str, near: int) -> StreamHeader:
    manifest = load_manifest("default")
    h, w = ids.shape[1:]
    return StreamHeader(
        manifest.codebook_sha256, manifest.codebook_size, h, w, 8 * h, 8 * w, 8 * h, 8 * w, codec=codec, near=near
    )


def _write(path: Path, ids: np.ndarray, codec: str, per_chunk: int = 8, near: int | None = None) -> None:
    """Codec ctx writes version 3 (``near`` codes ranked, the writer's default) unless ``near`` is 0 (version 2)."""
    near = (ctxcoder.near_count(CODEBOOK.shape[0]) if codec == "ctx" else 0) if near is None else near
    header = _header(ids, codec, near)
    with TokenStreamWriter(path, header, frames_per_chunk=per_chunk, fsync=False, codebook=CODEBOOK) as writer:
        for t, frame in enumerate(ids):
            writer.write(frame, 40.0 * t)


def _read(path: Path) -> tuple[list, object]:
    with TokenStreamReader(path, codebook=CODEBOOK) as reader:
        frames = list(reader.frames())
        return frames, reader.report


@pytest.mark.parametrize("lanes", [2, 7, 64])
def test_rans_round_trips_every_kind_of_distribution(lanes: int) -> None:
    rng = np.random.default_rng(lanes)
    n = 3000
    f1 = rng.integers(1, rans.M, n)
    bits = rng.random(n) < f1 / rans.M
    counts = rng.integers(0, 50, (n, 7)) * (rng.random((n, 7)) < 0.7)
    counts[:, -1] += 1
    cdf = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(counts * rans.M // counts.sum(1, keepdims=True), 1)], 1)
    cdf[:, -1] = rans.M
    syms = np.array([rng.choice(np.flatnonzero(np.diff(row))) for row in cdf])
    enc = rans.RansEncoder()
    enc.put(*rans.binary_intervals(bits, f1))
    pick = np.arange(n)
    enc.put(cdf[pick, syms], cdf[pick, syms + 1] - cdf[pick, syms])
    values = rng.integers(0, 1 << 5, 700)
    enc.put(values << 11, np.full(700, 1 << 11))
    data = enc.finish(lanes)
    dec = rans.RansDecoder(data)
    assert np.array_equal(dec.decode(1234, rans.binary_lookup(f1[:1234])), bits[:1234])  # batches need not align
    assert np.array_equal(dec.decode(n - 1234, rans.binary_lookup(f1[1234:])), bits[1234:])
    assert np.array_equal(dec.decode(n, rans.rows_lookup(cdf)), syms)
    assert np.array_equal(dec.decode(700, rans.uniform_lookup(5)), values)
    dec.check()
    flipped = bytearray(data)
    flipped[-2] ^= 0x55  # one word of the last lane changed: it no longer ends where it began
    bad = rans.RansDecoder(bytes(flipped))
    bad.decode(n, rans.binary_lookup(f1))
    bad.decode(n, rans.rows_lookup(cdf))
    bad.decode(700, rans.uniform_lookup(5))
    with pytest.raises(rans.RansError):
        bad.check()
    with pytest.raises(rans.RansError):
        rans.RansDecoder(data[:-2])  # cut short: the lane lengths disagree with the size


def test_latents_output_keeps_the_ids(static_scene: dict[str, np.ndarray]) -> None:
    assert np.array_equal(static_scene["ids"], static_scene["plain"])  # the extra output changes nothing


@pytest.mark.parametrize(("codec", "near", "version"), [("ctx", None, 3), ("ctx", 0, 2), ("zlib", 0, 1)])
def test_streams_round_trip_exactly_and_carry_their_version(
    tmp_path: Path, static_scene: dict[str, np.ndarray], codec: str, near: int | None, version: int
) -> None:
    ids = static_scene["ids"]
    _write(tmp_path / "s.ptok", ids, codec, near=near)
    frames, report = _read(tmp_path / "s.ptok")
    assert report.ok and len(frames) == FRAMES
    assert all(np.array_equal(f.ids, i) for f, i in zip(frames, ids, strict=True))
    data = (tmp_path / "s.ptok").read_bytes()
    assert struct.unpack_from("<H", data, 4)[0] == version
    assert data[47] == (ctxcoder.NEAR if version == 3 else 0)  # the header's near byte


def test_context_coding_halves_a_static_scene(tmp_path: Path, static_scene: dict[str, np.ndarray]) -> None:
    ids = static_scene["ids"]
    for name, codec, near in (("v3", "ctx", None), ("v2", "ctx", 0), ("zlib", "zlib", 0)):
        _write(tmp_path / f"{name}.ptok", ids, codec, per_chunk=FRAMES, near=near)
    v3, v2, old = (stream_stats(tmp_path / f"{n}.ptok", codebook=CODEBOOK) for n in ("v3", "v2", "zlib"))
    changed = np.mean([np.count_nonzero(ids[t] != ids[t - 1]) for t in range(1, FRAMES)])
    print(f"ctx v3 {v3.bytes_per_frame:.0f} B/frame, v2 {v2.bytes_per_frame:.0f}, zlib {old.bytes_per_frame:.0f}, "
          f"changed ids {changed:.0f}")  # fmt: skip
    assert changed > 20  # sensor noise does flip ids: there is something to code
    assert v2.total_bytes <= 0.6 * old.total_bytes
    assert v3.total_bytes <= 0.95 * v2.total_bytes  # ranking escapes near the previous code pays


def test_a_version_3_stream_needs_its_own_codebook(tmp_path: Path, static_scene: dict[str, np.ndarray]) -> None:
    path = tmp_path / "s.ptok"
    _write(path, static_scene["ids"][:3], "ctx")
    with TokenStreamReader(path) as reader:  # the shipped model's stream: its codebook is found without being passed
        assert len(list(reader.frames())) == 3
    data = bytearray(path.read_bytes())
    data[8] ^= 1  # another model's fingerprint (header CRC fixed up): no codebook to be found
    meta = struct.unpack_from("<I", data, 92)[0]
    struct.pack_into("<I", data, 96 + meta, zlib.crc32(data[: 96 + meta]))
    (tmp_path / "other.ptok").write_bytes(bytes(data))
    with pytest.raises(EdgeError, match="version 3 codes ids against the model's codebook: pass"):
        TokenStreamReader(tmp_path / "other.ptok")
    other = CODEBOOK.copy()
    other[0, 0] += 1.0
    with pytest.raises(EdgeError, match="not the stream's"):
        TokenStreamReader(path, codebook=other)
    with pytest.raises(EdgeError, match="codebook of shape"):
        TokenStreamReader(path, codebook=CODEBOOK[:10])
    header = dataclasses.replace(_header(static_scene["ids"], "ctx", 64), codebook_sha256="ab" * 32)
    with pytest.raises(EdgeError, match="version 3 codes ids against"):
        TokenStreamWriter(tmp_path / "new.ptok", header)
    assert not (tmp_path / "new.ptok").exists()  # refused before anything was written
    with pytest.raises(EdgeError, match="near 64 needs codec ctx"):
        _header(static_scene["ids"], "zlib", 64)


def test_near_codes_are_exact_and_platform_free() -> None:
    """The table ranks by exact integer distances with ties to the lower id: the same as float64 ranking where
    float64 is exact, unchanged when the codebook is scaled by a power of two, and independent of the block size."""
    near = ctxcoder.near_codes(CODEBOOK, 64)
    assert near.shape == (CODEBOOK.shape[0], 64)
    assert not (near == np.arange(CODEBOOK.shape[0])[:, None]).any()  # a code is never its own neighbour
    assert np.array_equal(near, ctxcoder.near_codes(CODEBOOK * 4.0, 64))
    grid = np.array([[x, y] for y in range(3) for x in range(3)], dtype=np.float32)  # 3 x 3 lattice: many ties
    lattice = ctxcoder.near_codes(grid, 4)
    assert lattice[4].tolist() == [1, 3, 5, 7]  # the centre's four at distance 1, lower ids first
    assert lattice[0].tolist() == [1, 3, 4, 2]  # a corner: 1, 3 at 1, then 4 at sqrt 2, then 2 at 2 (before 6)
    cb = CODEBOOK.astype(np.float64)
    dist = ((cb[:, None] - cb[None]) ** 2).sum(-1)
    by_float = np.argsort(dist, 1, kind="stable")[:, 1:65]
    assert (by_float == near).mean() > 0.99  # the scaled integers round far below the gaps between distances


def test_each_chunk_decodes_without_its_predecessors(tmp_path: Path, static_scene: dict[str, np.ndarray]) -> None:
    ids = static_scene["ids"]
    path = tmp_path / "s.ptok"
    _write(path, ids, "ctx", per_chunk=5)  # chunks of frames 0-4, 5-9, 10-14, 15
    data = path.read_bytes()
    with TokenStreamReader(path, codebook=CODEBOOK) as reader:
        start = reader.data_offset
    starts = [i for i in range(start, len(data)) if data[i : i + 4] == b"PTKC"]
    assert len(starts) == 4
    alone = tmp_path / "third.ptok"
    alone.write_bytes(data[:start] + data[starts[2] : starts[3]])  # the header and chunk 2 only
    frames, report = _read(alone)
    assert [f.index for f in frames] == [10, 11, 12, 13, 14]
    assert all(np.array_equal(f.ids, ids[f.index]) for f in frames)
    assert [(d.first_chunk, d.last_chunk) for d in report.damaged] == [(0, 1)]  # reported missing, not decoded


def test_damaged_coded_ids_with_valid_crcs_are_reported(tmp_path: Path, static_scene: dict[str, np.ndarray]) -> None:
    path = tmp_path / "s.ptok"
    _write(path, static_scene["ids"], "ctx")
    data = bytearray(path.read_bytes())
    with TokenStreamReader(path, codebook=CODEBOOK) as reader:
        start = reader.data_offset
    stored = struct.unpack_from("<I", data, start + 24)[0]
    payload = start + CHUNK_HEADER_SIZE
    data[payload + stored - 7] ^= 0x5A  # inside the first chunk's coded ids
    struct.pack_into("<I", data, start + 40, zlib.crc32(data[payload : payload + stored]))
    path.write_bytes(bytes(data))
    frames, report = _read(path)
    assert [f.index for f in frames] == list(range(8, FRAMES))  # the second chunk is intact
    assert report.damaged[0].first_chunk == 0 and "coded ids" in report.damaged[0].reason
    with pytest.raises(EdgeError, match="damaged token stream"):
        report.check()


def test_a_version_1_header_with_codec_ctx_is_refused(tmp_path: Path, static_scene: dict[str, np.ndarray]) -> None:
    path = tmp_path / "s.ptok"
    _write(path, static_scene["ids"][:2], "ctx", near=0)  # version 2
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 4, 1)
    meta = struct.unpack_from("<I", data, 92)[0]
    struct.pack_into("<I", data, 96 + meta, zlib.crc32(data[: 96 + meta]))
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeError, match="version 1 with codec ctx"):
        TokenStreamReader(path, codebook=CODEBOOK)


def test_ctx_coder_rejects_ids_it_did_not_write() -> None:
    ids = np.random.default_rng(0).integers(0, 1000, (3, 24))
    data = ctxcoder.encode_chunk([(True, ids[0]), (False, ids[1]), (False, ids[2])], (3, 8), 1000)
    assert [np.array_equal(a, b) for a, b in zip(ctxcoder.decode_chunk(data, [True, False, False], (3, 8), 1000),
                                                  ids, strict=True)] == [True] * 3  # fmt: skip
    with pytest.raises(ctxcoder.CoderError):
        ctxcoder.decode_chunk(data, [True, False], (3, 8), 1000)  # a frame fewer: words left over


def test_stable_tokens_hold_ids_within_the_margin(static_scene: dict[str, np.ndarray]) -> None:
    ids, latents = static_scene["ids"], static_scene["latents"]
    codebook = load_codebook(load_manifest("default"))
    assert np.array_equal(StableTokens(codebook, 0.0).step(ids[1], latents[1], refresh=False), ids[1])
    stable = StableTokens(codebook, DEFAULT_MARGIN)
    held = [stable.step(ids[0], latents[0], refresh=True)]
    assert np.array_equal(held[0], ids[0])  # a keyframe takes the nearest codes
    for t in range(1, FRAMES):
        held.append(stable.step(ids[t], latents[t], refresh=False))
        z = np.moveaxis(latents[t], 0, -1)
        near = np.linalg.norm(z - codebook[ids[t]], axis=-1)
        kept = np.linalg.norm(z - codebook[held[t]], axis=-1)
        assert np.all(kept <= (1 + DEFAULT_MARGIN) * near * (1 + 1e-5))
    before = sum(np.count_nonzero(ids[t] != ids[t - 1]) for t in range(1, FRAMES))
    after = sum(np.count_nonzero(held[t] != held[t - 1]) for t in range(1, FRAMES))
    assert after < 0.5 * before
    with pytest.raises(EdgeError, match="margin"):
        StableTokens(codebook, -0.1)


def test_the_codebook_loads_from_its_file_without_onnx(tmp_path: Path) -> None:
    """The shipped model directory's codebook.f32 is the fingerprinted codebook and reads without onnx (the Jetson
    runtime need not have it); a directory without the file falls back to the graph; a wrong file is one line."""
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from provq.edge_runtime.manifest import load_manifest\n"
        "from provq.edge_runtime.stable import load_codebook\n"
        "print(load_codebook(load_manifest('default')).tobytes().hex()[:64])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == CODEBOOK.tobytes().hex()[:64]
    copy = tmp_path / "model"
    shutil.copytree(default_model_dir(), copy)
    (copy / "codebook.f32").unlink()
    assert np.array_equal(load_codebook(load_manifest(copy)), CODEBOOK)  # read from the FP32 encoder graph
    (copy / "codebook.f32").write_bytes(CODEBOOK[::-1].tobytes())
    with pytest.raises(EdgeError, match="is not the codebook the manifest's codebook_sha256 names"):
        load_codebook(load_manifest(copy))
