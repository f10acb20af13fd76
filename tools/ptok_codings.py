"""The same token ids written with each ``.ptok`` coding: bytes per frame and coding times, ids checked identical.

Reads the frames of existing token streams (made by ``provq-run --tokens``), writes each one's ids again as codec
zlib (version 1), codec ctx without the codebook (version 2) and codec ctx against the codebook (version 3, what
provq-run writes), in 30-frame chunks, reads every copy back and checks that it holds exactly the same ids, and
prints one line per coding and the ratios. Nothing but the ids changes between the three, so the ratios are the
codings' own.

    provq-run vtest.avi --max-frames 200 --tokens vtest.ptok
    python tools/ptok_codings.py vtest.ptok tree.ptok --json codings.json
    python tools/ptok_codings.py cam.ptok --model models/tiny      # a stream of another model

Exit status 0, or 2 with one line on a user error (a stream that is not there, another model's stream).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from provq.edge_runtime.console import command_frame
from provq.edge_runtime.ctxcoder import near_count
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.formats.files import write_json_atomic
from provq.edge_runtime.manifest import load_manifest
from provq.edge_runtime.stable import load_codebook
from provq.edge_runtime.tokenstream import Frame, StreamHeader, TokenStreamReader, TokenStreamWriter, stream_stats

PROG = "ptok_codings"
CODINGS = (("zlib", "zlib", False), ("ctx-v2", "ctx", False), ("ctx-v3", "ctx", True))  # name, codec, near


def measure(path: Path, codebook: np.ndarray) -> dict[str, Any]:
    """One stream's frames in each coding: {coding: {bytes_per_frame, write_ms, read_ms}}, plus frames and grid."""
    with TokenStreamReader(path, codebook=codebook) as reader:
        header = reader.header
        frames = list(reader.frames())
        reader.report.check()
    if not frames:
        raise EdgeError(f"{path} holds no frames: pass a stream written by provq-run --tokens")
    result: dict[str, Any] = {"frames": len(frames), "grid": [header.grid_height, header.grid_width]}
    with tempfile.TemporaryDirectory(prefix="provq-codings-") as folder:
        for name, codec, near in CODINGS:
            copy = dataclasses.replace(header, codec=codec, near=near_count(header.codebook_size) if near else 0)
            result[name] = _write_and_read(Path(folder) / f"{name}.ptok", copy, frames, codebook)
    for name in ("ctx-v2", "ctx-v3"):
        result[f"{name}_of_zlib"] = round(result[name]["bytes_per_frame"] / result["zlib"]["bytes_per_frame"], 4)
    return result


def _write_and_read(path: Path, header: StreamHeader, frames: list[Frame], codebook: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    with TokenStreamWriter(path, header, fsync=False, codebook=codebook) as writer:
        for frame in frames:
            writer.write(frame.ids, frame.timestamp_ms)
    written = time.perf_counter()
    stats = stream_stats(path, codebook=codebook)
    read = time.perf_counter()
    with TokenStreamReader(path, codebook=codebook) as reader:
        back = list(reader.frames())
    if len(back) != len(frames) or any(not np.array_equal(a.ids, b.ids) for a, b in zip(back, frames, strict=True)):
        raise RuntimeError(f"{header.codec} version {header.version} did not give back the same ids")
    return {
        "bytes_per_frame": round(stats.bytes_per_frame, 1),
        "write_ms": round((written - start) * 1e3 / len(frames), 2),
        "read_ms": round((read - written) * 1e3 / len(frames), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("streams", nargs="+", type=Path, metavar="STREAM.ptok")
    parser.add_argument("--model", default="default", help="the streams' model (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args(argv)
    return command_frame(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    codebook = load_codebook(load_manifest(args.model))
    results = {}
    for path in args.streams:
        results[str(path)] = r = measure(path, codebook)
        for name, _, _ in CODINGS:
            row = r[name]
            print(f"{path.name:24s} {name:7s} {row['bytes_per_frame']:9.1f} B/frame  write {row['write_ms']:6.2f} "
                  f"ms/frame  read {row['read_ms']:6.2f} ms/frame")  # fmt: skip
        print(f"{path.name:24s} ctx-v3 {r['ctx-v3_of_zlib']:.1%} of zlib, ctx-v2 {r['ctx-v2_of_zlib']:.1%}")
    if args.json is not None:
        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
