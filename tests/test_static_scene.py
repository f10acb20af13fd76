"""tools/make_static_scene.py: the synthetic static-camera clip the stable-token margin is chosen on is stored
losslessly, its background changes by noise alone and its figures move at their speeds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from provq.edge_runtime.manifest import default_model_dir
from provq.edge_runtime.sources import open_source

TOOLS = Path(__file__).resolve().parents[1] / "tools"
BACKGROUND = default_model_dir().parent / "sample" / "images" / "chelsea.jpg"


@pytest.fixture
def scene(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import make_static_scene

    return make_static_scene


def test_the_clip_reads_back_exactly_as_generated(scene, tmp_path: Path) -> None:
    out = tmp_path / "scene.mkv"
    assert scene.main(["--background", str(BACKGROUND), "--out", str(out), "--frames", "4"]) == 0
    expected = list(scene.frames(cv2.imread(str(BACKGROUND)), 4, seed=0))
    with open_source(str(out)) as source:
        read = [frame.image for frame in source]
    assert len(read) == 4 and read[0].shape == (576, 768, 3)
    for got, want in zip(read, expected, strict=True):
        assert np.array_equal(got, want)  # FFV1: lossless


def test_background_changes_by_noise_and_figures_move(scene) -> None:
    flat = np.full((100, 100, 3), 128, np.uint8)
    first, second = scene.frames(flat, 2, seed=0)
    width, height = scene.FIGURE
    top, x0, speed = scene.FIGURES[0][1:]
    corner = (slice(0, 100), slice(300, 400))  # no figure passes there
    diff = first[corner].astype(int) - second[corner].astype(int)
    assert 2.5 < diff.std() < 5.0 and abs(diff.mean()) < 0.5  # two draws of N(0, 2.5): std 2.5 * sqrt(2)
    row = slice(top, top + height)
    step = round(x0 + speed) - x0
    assert step == 2
    figure = first[row, x0 : x0 + width].astype(int)
    followed = np.abs(figure - second[row, x0 + step : x0 + step + width].astype(int)).mean()  # noise only
    in_place = np.abs(figure - second[row, x0 : x0 + width].astype(int)).mean()  # noise and the 2-pixel shift
    assert followed < 4.0 < in_place


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0"], "--frames and --fps must be at least 1"),
        (["--background", "{tmp}/missing.jpg"], "is not an image OpenCV can read"),
        (["--out", "{tmp}/no/such/scene.mkv"], "is not a folder"),
        (["--out", "{tmp}/kept.mkv"], "kept.mkv exists"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_overwritten(scene, tmp_path: Path, capsys, args, message) -> None:
    kept = tmp_path / "kept.mkv"
    kept.write_bytes(b"earlier work")
    base = {"--background": str(BACKGROUND), "--out": str(tmp_path / "new.mkv"), "--frames": "2"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value.format(tmp=tmp_path)
    assert scene.main([item for pair in base.items() for item in pair]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("make_static_scene: error: ") and message in err[0]
    assert kept.read_bytes() == b"earlier work" and not (tmp_path / "new.mkv").exists()
