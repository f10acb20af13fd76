"""Atomic file writing and file digests: the one implementation every stage writes its results through.

A file written here is complete or absent: the bytes go to a temporary name beside the destination, are flushed to
disk (fsync), renamed over the destination, and the rename itself is made durable (fsync of the folder). A crash or
a power loss leaves the old file or the new one, never half of one. A directory (a model directory, a calibration
cache entry, a corpus) is written the same way as a whole: filled under a temporary name beside it, every file and
folder in it fsynced, then swapped in for the old one (``staged_directory``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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
            replace_durably(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename the finished file ``tmp`` over ``path``: fsync of ``tmp``, the rename, fsync of the folder. What
    ``atomic_path`` does on a clean exit, for a writer whose file outlives one ``with`` block (a video written frame
    by frame and finished at its close)."""
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(Path(path).parent)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, ``root`` last (a folder after what it holds)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder, name))
        _fsync_path(Path(folder))


def _swap_in(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``. An old ``path`` is renamed aside to ``.NAME.old`` first, put back if the
    second rename fails, and removed only once the new one is durably in place (fsync of the parent folder)."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # left by a process killed between the two renames
    had_old = path.exists()
    if had_old:
        path.rename(old)
    try:
        staging.rename(path)
    except BaseException:
        if had_old:
            old.rename(path)
        raise
    _fsync_path(path.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` (``.NAME.XXXXXXXX``, with an ordinary folder's permissions) to fill;
    on a clean exit everything in it is fsynced and it replaces the directory ``path`` (which need not exist; its
    parents are made), on an exception it is removed and ``path`` is left as it was. The old directory is renamed
    aside (``.NAME.old``) for the swap and removed only once the new one is in place, so ``path`` never holds a
    half-written directory; a crash between the swap's two renames leaves the old one as ``.NAME.old``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700)
    try:
        yield staging
        _fsync_tree(staging)
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
