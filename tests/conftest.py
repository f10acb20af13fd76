"""Shared fixtures: small folders of real photos (shipped sample and held-out ones) for fast training runs, the
exported default model, RTSP servers, and the fake TensorRT with a tiny model directory for the engine tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from provq.train.data import sample_dir

if TYPE_CHECKING:
    from fake_tensorrt import FakeState
    from rtsp_server import RtspServer

AARCH64_SWITCH = "PROVQ_CI_AARCH64"  # =1: run the aarch64-marked tests (the emulated arm64 root) too
CI_SWITCH = "PROVQ_CI"  # =1 (set by .ci/run): a missing system package fails its tests instead of skipping them


def require_system(problem: str) -> None:
    """Skip (locally) or fail (in CI, PROVQ_CI=1) a test whose system packages are absent; ``problem`` '' is fine."""
    import os

    if not problem:
        return
    if os.environ.get(CI_SWITCH) == "1":
        pytest.fail(f"{problem} (PROVQ_CI=1: the README's test command installs it)", pytrace=False)
    pytest.skip(f"{problem}; the README's test command installs the Debian packages")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests marked ``aarch64`` unless ``-m`` names that marker or PROVQ_CI_AARCH64=1."""
    import os

    if "aarch64" in (config.option.markexpr or "") or os.environ.get(AARCH64_SWITCH) == "1":
        return
    deselected = [item for item in items if item.get_closest_marker("aarch64")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("aarch64")]


def _write_resized(images: dict[str, np.ndarray], folder: Path, side: int) -> Path:
    """RGB uint8 images saved as PNG with the longer side resized to ``side``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in images.items():
        h, w = rgb.shape[:2]
        scale = side / max(h, w)
        small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="session", autouse=True)
def _index_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """File indexes are cached in a temporary folder (subprocesses inherit it), not in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped sample photos at 96 px: quick to train on."""
    images = {}
    for path in sorted((sample_dir() / "images").glob("*.jpg")):
        images[path.stem] = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return _write_resized(images, tmp_path_factory.mktemp("photos"), 96)


@pytest.fixture(scope="session")
def unseen_photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos that provq does not ship and the default model never saw (skimage, scikit-learn)."""
    skimage_data = pytest.importorskip("skimage.data")
    from sklearn.datasets import load_sample_image

    left, _right, _disp = skimage_data.stereo_motorcycle()
    images = {"coffee": skimage_data.coffee(), "motorcycle": left, "flower": load_sample_image("flower.jpg")}
    return _write_resized(images, tmp_path_factory.mktemp("unseen"), 160)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's FP32 network exported to ONNX once per session: the shipped checkpoint less its
    quantization-aware state (the same weights), which is what provq-calibrate's post-training INT8 starts from."""
    from provq.export.onnx_export import export_model
    from provq.train import checkpoint, qat

    folder = tmp_path_factory.mktemp("export")
    state = checkpoint.load("default")
    state["model"], state[qat.KEY] = qat.without_quantizers(state["model"]), None
    checkpoint.save_atomic(state, folder / "default-fp32.pt")
    export_model(folder / "default-fp32.pt", folder / "tiny")
    return folder / "tiny"


@pytest.fixture(scope="session")
def rtsp_available() -> None:
    """GStreamer's RTSP server runs here (system python3 with PyGObject, x264enc...); skip or fail otherwise."""
    from rtsp_server import missing

    require_system(missing())


@pytest.fixture
def rtsp_servers(rtsp_available: None) -> Iterator[Callable[..., RtspServer]]:
    """``rtsp_servers(mounts=("cam",), width=384, height=288, rate=10)``: a started RtspServer on 127.0.0.1
    (tests/rtsp_server.py); every server made is stopped (or killed) when the test ends."""
    from rtsp_server import RtspServer

    made: list[RtspServer] = []

    def start(mounts: tuple[str, ...] = ("cam",), **options: object) -> RtspServer:
        server = RtspServer(mounts, **options)
        made.append(server)
        return server.start()

    yield start
    for server in made:
        server.stop()


@pytest.fixture(params=["10.3.0", "11.4.1"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeState:
    """The fake tensorrt + cuda-python in sys.modules, once per TensorRT major version."""
    from engine_helpers import install_fake

    return install_fake(monkeypatch, request.param)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A tiny model directory of the engine tests: manifest.json plus fake ONNX files (tests/engine_helpers.py)."""
    from engine_helpers import make_model_dir

    return make_model_dir(tmp_path)
