"""Write a synthetic static-camera clip: a still photo with sensor noise, a slow gain drift and figures walking
across it, stored losslessly (FFV1 in Matroska, through PyAV).

It is design material for the token stream (the stable-token margin is chosen on it, docs/BENCHMARKS.md): it has
what a fixed surveillance camera shows (a background that only noise changes, and a few moving objects) without
using any held-out footage. The figures are 64 x 160 cut-outs of scikit-image's ``astronaut``, ``chelsea`` and
``rocket`` photos (training-corpus photos), each moving sideways at its own constant speed.

    python tools/make_static_scene.py --background WALLPAPER.jpg --out scene.mkv --frames 60

Frame t (0-based, of T): background * (1 + 0.004 t / T) + N(0, 2.5 levels) per pixel and channel, figures pasted on
top (the same noise), clipped to 0-255. ``--seed`` fixes the noise. Needs numpy, opencv, scikit-image and PyAV.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from provq.edge_runtime.console import command_frame
from provq.edge_runtime.errors import ProvqError
from provq.edge_runtime.formats.files import atomic_path
from provq.edge_runtime.preprocess import cover_crop
from provq.edge_runtime.sources.video_readers import import_pyav

SIZE = (768, 576)  # width, height: a PAL-like surveillance frame, as vtest-class cameras record
FIGURE = (64, 160)  # width, height of each moving figure
# (photo, top row of the figure in the frame, start column, speed in pixels per frame; negative: right to left)
FIGURES = (
    (skimage.data.astronaut, 300, 40, 2.0),
    (skimage.data.chelsea, 360, 700, -3.0),
    (skimage.data.rocket, 180, 200, 1.5),
)
NOISE = 2.5  # sensor noise, standard deviation in levels of 0-255
DRIFT = 0.004  # gain change over the whole clip


def frames(background: np.ndarray, count: int, seed: int) -> Iterator[np.ndarray]:
    """``count`` BGR uint8 frames of SIZE, one at a time: the scene described in the module docstring."""
    rng = np.random.default_rng(seed)
    base = cover_crop(background, *SIZE).astype(np.float32)
    figures = [
        (cover_crop(photo()[:, :, ::-1], *FIGURE).astype(np.float32), top, x0, v) for photo, top, x0, v in FIGURES
    ]
    for t in range(count):
        frame = base * (1.0 + DRIFT * t / count)
        for patch, top, x0, speed in figures:
            left = round(x0 + speed * t) % (SIZE[0] - FIGURE[0])
            frame[top : top + FIGURE[1], left : left + FIGURE[0]] = patch
        frame += rng.normal(0.0, NOISE, frame.shape).astype(np.float32)
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def write_ffv1(path: Path, bgr_frames: Iterable[np.ndarray], fps: int) -> None:
    """Lossless Matroska (FFV1, bgr0) at ``fps``, written under a temporary name and renamed into place when
    complete (an interrupted run leaves no partial clip)."""
    av = import_pyav()
    with atomic_path(path, ".mkv") as tmp, av.open(str(tmp), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "bgr0"
        for bgr in bgr_frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", type=Path, required=True, help="a photo (any size; covered to 768 x 576)")
    parser.add_argument("--out", type=Path, required=True, help="the .mkv to write (not overwritten)")
    parser.add_argument("--frames", type=int, default=60, help="default: %(default)s")
    parser.add_argument("--fps", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    args = parser.parse_args(argv)
    return command_frame("make_static_scene", lambda: _write(args))


def _write(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.fps < 1:
        raise ProvqError(f"--frames and --fps must be at least 1, got {args.frames} and {args.fps}")
    if args.out.exists():
        raise ProvqError(f"{args.out} exists: remove it or choose another --out")
    if not args.out.parent.is_dir():
        raise ProvqError(f"{args.out.parent} is not a folder: create it or choose another --out")
    background = cv2.imread(str(args.background), cv2.IMREAD_COLOR)
    if background is None:
        raise ProvqError(f"{args.background} is not an image OpenCV can read: pass a photo (JPEG, PNG, ...)")
    write_ffv1(args.out, frames(background, args.frames, args.seed), args.fps)
    print(f"wrote {args.out}: {args.frames} frames of {SIZE[0]} x {SIZE[1]} at {args.fps} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
