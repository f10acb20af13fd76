"""Engine input shapes: ``NxCxHxW`` text, optimization profiles in image pixels, and the profile tag in engine
file names (see engine_meta.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import EdgeError
from .manifest import Manifest

Shape = tuple[int, ...]


def parse_shape(text: str) -> Shape:
    """``"1x3x256x256"`` -> (1, 3, 256, 256); EdgeError on anything else."""
    parts = str(text).lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EdgeError(f"shape {text!r} is not like 1x3x256x256 (positive integers joined by 'x')")
    return tuple(int(p) for p in parts)


def format_shape(shape: Shape) -> str:
    """(1, 3, 256, 256) -> ``"1x3x256x256"``."""
    return "x".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class ShapeProfile:
    """An optimization profile for one input: min <= opt <= max, dimension by dimension."""

    min: Shape
    opt: Shape
    max: Shape

    @property
    def is_static(self) -> bool:
        """True when min == opt == max (what DLA needs)."""
        return self.min == self.opt == self.max

    def contains(self, shape: Shape) -> bool:
        """True when ``shape`` has the profile's rank and lies between min and max in every dimension."""
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )

    def __str__(self) -> str:
        if self.is_static:
            return format_shape(self.opt)
        return f"{format_shape(self.min)}..{format_shape(self.max)} (opt {format_shape(self.opt)})"


def image_profile(manifest: Manifest, min_shape: Shape, opt_shape: Shape, max_shape: Shape) -> ShapeProfile:
    """Check an image-side profile (N x 3 x H x W, H and W multiples of the downsample factor, min <= opt <= max)."""
    ds = manifest.downsample
    for label, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
            raise EdgeError(f"--{label}-shape {format_shape(shape)} is not N x 3 x H x W (e.g. 1x3x256x256)")
        if shape[2] % ds or shape[3] % ds:
            raise EdgeError(
                f"--{label}-shape {format_shape(shape)}: H and W must be multiples of the model's downsample {ds}"
            )
    ordered = zip(min_shape, opt_shape, max_shape, strict=True)
    if not all(lo <= mid <= hi for lo, mid, hi in ordered):
        raise EdgeError(
            f"shape profile out of order: need min {format_shape(min_shape)} <= opt {format_shape(opt_shape)} <= "
            f"max {format_shape(max_shape)} in every dimension"
        )
    return ShapeProfile(tuple(min_shape), tuple(opt_shape), tuple(max_shape))


def input_profile(manifest: Manifest, part: str, images: ShapeProfile) -> ShapeProfile:
    """The engine input's profile for an image-side one: the encoder takes the images (N x 3 x H x W float32), the
    decoder the token grid (N x H/ds x W/ds int32)."""
    if part == "encoder":
        return images
    ds = manifest.downsample

    def ids(shape: Shape) -> Shape:
        return (shape[0], shape[2] // ds, shape[3] // ds)

    return ShapeProfile(ids(images.min), ids(images.opt), ids(images.max))


def image_shape(manifest: Manifest, part: str, shape: Shape) -> Shape:
    """The image shape N x 3 x H x W that an engine input shape of ``part`` corresponds to (inverse of the above)."""
    if part == "encoder":
        return tuple(shape)
    ds = manifest.downsample
    return (shape[0], 3, shape[1] * ds, shape[2] * ds)


def _dim(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def shape_tag(images: ShapeProfile) -> str:
    """The file-name form of an image-side profile: ``b1-4x256x256``, ``b1x256-512x256-512o1x384x384``."""
    lo, hi, opt = images.min, images.max, images.opt
    tag = f"b{_dim(lo[0], hi[0])}x{_dim(lo[2], hi[2])}x{_dim(lo[3], hi[3])}"
    if opt != hi:
        tag += f"o{opt[0]}x{opt[2]}x{opt[3]}"
    return tag


_TAG = re.compile(r"^b(\d+)(?:-(\d+))?x(\d+)(?:-(\d+))?x(\d+)(?:-(\d+))?(?:o(\d+)x(\d+)x(\d+))?$")


def parse_shape_tag(tag: str) -> ShapeProfile | None:
    """Inverse of ``shape_tag``; None when ``tag`` is not one."""
    m = _TAG.match(tag)
    if m is None:
        return None
    g = [None if v is None else int(v) for v in m.groups()]
    lo = (g[0], 3, g[2], g[4])
    hi = (g[1] or g[0], 3, g[3] or g[2], g[5] or g[4])
    opt = (g[6], 3, g[7], g[8]) if g[6] is not None else hi
    return ShapeProfile(lo, opt, hi)  # type: ignore[arg-type]
