"""Write the held-out real photos (not shipped with provq) as a training / validation pair for provq-study.

    python tools/make_study_photos.py --out runs/unseen-photos
    provq-study --data runs/unseen-photos/train --val runs/unseen-photos/val --val-size 512 --out runs/study

The photos are the ones ``edge_runtime/assets/sample/ATTRIBUTION.md`` lists as held out (source and rights there):
scikit-image's coffee, the left view of scikit-image's stereo motorcycle, scikit-learn's flower.jpg and matplotlib's
grace_hopper.jpg. Each is cut at native resolution into two halves across its longer side: the left (or top) half
goes to train/NAME.png, the right (or bottom) half to val/NAME.png, so training never sees a validation pixel.
Nothing is downloaded. Needs numpy, opencv-python-headless, scikit-image, scikit-learn and matplotlib.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from matplotlib import cbook
from sklearn.datasets import load_sample_image

PHOTOS: dict[str, Callable[[], np.ndarray]] = {  # name -> H x W x 3 RGB uint8
    "coffee": skimage.data.coffee,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "flower": lambda: load_sample_image("flower.jpg"),
    "grace_hopper": lambda: plt.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
}


def halves(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H x W x 3 -> (first, second) halves across the longer side: left/right if W >= H, else top/bottom."""
    h, w = rgb.shape[:2]
    if w >= h:
        return rgb[:, : w // 2], rgb[:, w // 2 :]
    return rgb[: h // 2], rgb[h // 2 :]


def write(out: Path) -> None:
    """train/NAME.png and val/NAME.png for every photo in PHOTOS."""
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        rgb = np.ascontiguousarray(load(), dtype=np.uint8)
        for split, part in zip(("train", "val"), halves(rgb), strict=True):
            path = out / split / f"{name}.png"
            cv2.imwrite(str(path), cv2.cvtColor(part, cv2.COLOR_RGB2BGR))
            print(f"{path}: {part.shape[1]} x {part.shape[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write train/ and val/ into")
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
