"""A compact, cached index of the files behind a ``--data`` or ``--val`` source.

Sources:
    DIR       every image (jpg, jpeg, png, webp, bmp) and video (mp4, avi, mkv, mov, webm, m4v) below it,
              recursively, sorted by relative path
    FILE      one image or video file
    SHARDS    WebDataset tar shards, e.g. ``shards/{000000..000099}.tar`` (brace expansion); each sample is the
              first image member of a key (``000123.jpg``), in the order of the shards and of the tar
    sample    the real photos and clip shipped with provq (``provq/edge_runtime/assets/sample``)

The index holds, per file or shard, its path, its kind (image, video, shard) and its count (1 for an image, the
container's frame count for a video, the number of samples for a shard; 0 when it does not open). It is a handful of
numpy arrays, paths as one UTF-8 byte buffer with offsets: a million files take tens of MB, and DataLoader workers
forked from the trainer share those pages (per-file Python objects would be copied by reference counting).

Cache: the index is written to ``<cache>/<sha256 of the source>.npz`` (default ``$XDG_CACHE_HOME/provq/index`` or
``~/.cache/provq/index``) and reused while it is valid: every indexed folder keeps its modification time (which
changes when an entry is added, removed or renamed in it) and every indexed single file or shard keeps its size and
modification time. Checking that costs one ``stat`` per folder, not per file. A file rewritten in place under the
same name is not noticed: ``--reindex`` rebuilds the index.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from braceexpand import braceexpand

from provq.edge_runtime.formats.files import atomic_path
from provq.edge_runtime.formats.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

from .data import (
    decode_image,
    read_image,
    read_video_frame,
    sample_dir,
    video_frame_count,
    video_frame_index,
)
from .errors import ProvqError

log = logging.getLogger(__name__)

IMAGE, VIDEO, SHARD = 0, 1, 2
FORMAT_VERSION = 1
LOG_INDEX_FROM = 10_000  # indexes of at least this many files are logged at INFO, smaller ones at DEBUG


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (uint8 buffer of their UTF-8 bytes, int64 offsets of length n + 1)."""
    encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _unpack(buffer: np.ndarray, offsets: np.ndarray, i: int) -> str:
    return buffer[offsets[i] : offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class MediaIndex:
    """The files of one source: ``kinds`` (int8 IMAGE/VIDEO/SHARD) and ``counts`` (int64) per file."""

    source: str  # as the user named it
    root: str  # folder the paths are relative to
    paths: np.ndarray  # uint8: UTF-8 relative paths, joined
    offsets: np.ndarray  # int64, len(self) + 1 entries
    kinds: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    def path(self, i: int) -> str:
        """The full path of file ``i``."""
        return os.path.join(self.root, _unpack(self.paths, self.offsets, i))

    def relative_path(self, i: int) -> str:
        return _unpack(self.paths, self.offsets, i)


@dataclass(frozen=True)
class _Stamps:
    """What a cached index was built from: paths with (mtime_ns, size), size 0 for folders."""

    paths: list[str]
    values: list[tuple[int, int]]
    folders: bool

    @staticmethod
    def of(paths: list[str], folders: bool) -> _Stamps:
        values = []
        for p in paths:
            st = os.stat(p)
            values.append((st.st_mtime_ns, 0 if folders else st.st_size))
        return _Stamps(paths, values, folders)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "provq" / "index"


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(sorted media files relative to root, every folder visited) below ``root``; symlinked folders followed once."""
    files: list[str] = []
    folders: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [""]
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else str(root)
        st = os.stat(full)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        folders.append(full)
        with os.scandir(full) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    stack.append(name)
                elif os.path.splitext(entry.name)[1].lower() in media and entry.is_file():
                    files.append(name)
    files.sort()
    return files, folders


def _shard_samples(path: str) -> int:
    """The number of samples (keys) in a WebDataset tar shard, by wids' own tar index; 0 if it is not a tar."""
    from wids.wids import IndexedTarSamples

    try:
        shard = IndexedTarSamples(path=path)
    except Exception:  # wids raises assorted errors on files that are not tars
        return 0
    try:
        return len(shard)
    finally:
        shard.close()


def _count(root: str, rel: str, kind: int) -> int:
    if kind == IMAGE:
        return 1
    path = os.path.join(root, rel)
    return video_frame_count(path) if kind == VIDEO else _shard_samples(path)


def _kind(name: str) -> int:
    return VIDEO if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS else IMAGE


def _scan(source: str) -> tuple[str, list[str], list[int], _Stamps]:
    """(root, relative paths, kinds, stamps) of a source, with one-line errors for missing or empty ones."""
    if ".tar" in source and ("{" in source or source.endswith(".tar")):
        shards = [os.path.abspath(os.path.expanduser(p)) for p in braceexpand(source)]
        missing = [p for p in shards if not os.path.isfile(p)]
        if missing:
            raise ProvqError(f"shard {missing[0]} does not exist ({len(missing)} of {len(shards)} missing)")
        return "", shards, [SHARD] * len(shards), _Stamps.of(shards, folders=False)
    path = sample_dir() if source == "sample" else Path(source).expanduser()
    if not path.exists():
        raise ProvqError(
            f"data path {path} does not exist: pass a folder of images, a video file, tar shards or 'sample'"
        )
    if path.is_file():
        if _kind(path.name) == IMAGE and path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ProvqError(
                f"{path} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a video "
                f"({', '.join(VIDEO_EXTENSIONS)}); tar shards need a .tar name"
            )
        absolute = str(path.resolve())
        return (
            os.path.dirname(absolute),
            [os.path.basename(absolute)],
            [_kind(path.name)],
            _Stamps.of([absolute], folders=False),
        )
    files, folders = _walk(path.resolve())
    if not files:
        raise ProvqError(
            f"no images or videos found in {path}: it needs {', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)} files"
        )
    return str(path.resolve()), files, [_kind(f) for f in files], _Stamps.of(folders, folders=True)


def _cache_file(source: str, cache_dir: Path) -> Path:
    key = source if source == "sample" else os.path.abspath(os.path.expanduser(source))
    return cache_dir / f"{hashlib.sha256(f'{FORMAT_VERSION}:{key}'.encode()).hexdigest()[:32]}.npz"


def _load_cached(file: Path, source: str) -> MediaIndex | None:
    """The cached index if it exists, has this format and nothing it was built from changed; else None."""
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    if int(arrays.get("version", -1)) != FORMAT_VERSION:
        return None
    stamp_buf, stamp_off, stamps = arrays["stamp_paths"], arrays["stamp_offsets"], arrays["stamps"]
    folders = bool(arrays["stamps_are_folders"])
    for i in range(len(stamps)):
        try:
            st = os.stat(_unpack(stamp_buf, stamp_off, i))
        except OSError:
            return None
        if (st.st_mtime_ns, 0 if folders else st.st_size) != tuple(int(v) for v in stamps[i]):
            return None
    root = arrays["root"].tobytes().decode("utf-8", "surrogateescape")
    return MediaIndex(source, root, arrays["paths"], arrays["offsets"], arrays["kinds"], arrays["counts"])


def _save(file: Path, index: MediaIndex, stamps: _Stamps) -> None:
    stamp_buf, stamp_off = _pack(stamps.paths)
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file, ".npz") as tmp:
        np.savez(
            tmp,
            version=np.int64(FORMAT_VERSION),
            root=np.frombuffer(index.root.encode("utf-8", "surrogateescape"), dtype=np.uint8),
            paths=index.paths,
            offsets=index.offsets,
            kinds=index.kinds,
            counts=index.counts,
            stamp_paths=stamp_buf,
            stamp_offsets=stamp_off,
            stamps=np.asarray(stamps.values, dtype=np.int64).reshape(-1, 2),
            stamps_are_folders=np.bool_(stamps.folders),
        )


def index_source(source: str, *, cache_dir: Path | None = None, reindex: bool = False) -> MediaIndex:
    """The index of ``source``, from the cache when it is still valid (``reindex`` rebuilds it).

    ``cache_dir`` defaults to ``default_cache_dir()``; a cache that cannot be written only costs a warning.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    file = _cache_file(source, cache_dir)
    if not reindex and (cached := _load_cached(file, source)) is not None:
        level = logging.INFO if len(cached) >= LOG_INDEX_FROM else logging.DEBUG
        log.log(level, "index of %s: %d files, from the cache %s", source, len(cached), file)
        return cached
    started = time.perf_counter()
    root, rels, kinds, stamps = _scan(source)
    counts = np.fromiter((_count(root, r, k) for r, k in zip(rels, kinds, strict=True)), np.int64, len(rels))
    paths, offsets = _pack(rels)
    index = MediaIndex(source, root, paths, offsets, np.asarray(kinds, dtype=np.int8), counts)
    seconds = time.perf_counter() - started
    try:
        _save(file, index, stamps)
    except OSError as err:
        log.warning("indexed %s: %d files in %.1f s, not cached (%s: %s)", source, len(index), seconds, err, file)
        return index
    level = logging.INFO if len(index) >= LOG_INDEX_FROM else logging.DEBUG
    log.log(level, "indexed %s: %d files in %.1f s, cached in %s", source, len(index), seconds, file)
    return index


class _OpenShards:
    """At most ``size`` open tar shards per process (wids' indexed reader), least recently used closed first."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.open: OrderedDict[str, Any] = OrderedDict()

    def get(self, path: str) -> Any:
        from wids.wids import IndexedTarSamples

        if path in self.open:
            self.open.move_to_end(path)
        else:
            self.open[path] = IndexedTarSamples(path=path)
            if len(self.open) > self.size:
                self.open.popitem(last=False)[1].close()
        return self.open[path]

    def __getstate__(self) -> dict[str, Any]:  # a worker process opens its own files
        return {"size": self.size, "open": OrderedDict()}


class Frames:
    """Decodes sample (file, position) of an index to H x W x 3 RGB uint8, or None if it does not decode."""

    def __init__(self, index: MediaIndex, max_video_frames: int) -> None:
        self.index = index
        self.max_video_frames = max_video_frames
        self.shards = _OpenShards()

    def per_file(self) -> np.ndarray:
        """Samples of each file (int64): 1 per image, the sampled frames per video, the keys per shard."""
        counts = self.index.counts
        videos = self.index.kinds == VIDEO
        return np.where(videos, np.minimum(counts, self.max_video_frames), counts)

    def decode(self, file: int, position: int) -> np.ndarray | None:
        kind, path = int(self.index.kinds[file]), self.index.path(file)
        if kind == IMAGE:
            return read_image(path)
        if kind == VIDEO:
            count = int(self.index.counts[file])
            return read_video_frame(path, video_frame_index(count, self.max_video_frames, position))
        try:
            sample = self.shards.get(path)[position]
        except Exception:  # a truncated or damaged shard: wids raises assorted errors
            return None
        for ext, value in sample.items():
            if ext.lower().endswith(IMAGE_EXTENSIONS) and hasattr(value, "getvalue"):
                return decode_image(value.getvalue())
        return None

    def describe(self, file: int, position: int) -> str:
        kind = int(self.index.kinds[file])
        suffix = f" frame {position}" if kind == VIDEO else f" sample {position}" if kind == SHARD else ""
        return self.index.path(file) + suffix
