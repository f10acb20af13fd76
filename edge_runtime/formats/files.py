"""Atomic file writing and file digests: the one implementation every stage writes its results through.

A file written here is complete or absent: the bytes go to a temporary name beside the destination, are flushed to
disk (fsync), renamed over the destination, and the rename itself is made durable (fsync of the folder). A crash or
a power loss leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, suffix: str = "", *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write (with any writer: torch.save, np.savez, cv2...); on a clean
    exit it is fsynced and renamed over ``path``, on an exception removed. ``suffix`` ends the temporary name (for
    writers that insist on an extension, such as ``np.savez``'s ``.npz``). ``fsync=False`` keeps the atomic rename
    but skips both fsyncs (for scratch files that need no power-loss safety)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes | memoryview, *, fsync: bool = True) -> None:
    """Write bytes (or a buffer such as TensorRT's IHostMemory) atomically: see ``atomic_path``."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        f.write(memoryview(data))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON (indented by 2, trailing newline, UTF-8) atomically: see ``atomic_path``."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
