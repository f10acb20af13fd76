"""GStreamer through OpenCV as on a Jetson: Debian's python3-opencv (built with GStreamer) seen from a venv made with
``--system-site-packages``, with provq installed from its wheel and no opencv-python-headless, runs provq-run on
gst:// pipelines (videotestsrc, the pipeline csi:// builds with the camera element swapped for videotestsrc, rtspsrc
from the loopback RTSP server) and rtsp://, and names a pipeline that does not parse. Skipped here without the Debian
packages; in CI (PROVQ_CI=1) their absence fails. PyPI's OpenCV without GStreamer: test_sources.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime
import pytest
from conftest import require_system
from rtsp_server import SYSTEM_PYTHON
from test_run_cli import read_pngs

from provq.edge_runtime.source_uri import csi_pipeline, rtsp_pipeline
from provq.edge_runtime.tokenstream import TokenStreamReader

if TYPE_CHECKING:
    from rtsp_server import RtspServer

ROOT = Path(__file__).resolve().parents[1]
SIZE = (192, 144)
pytestmark = pytest.mark.slow  # a venv built per session (about 35 s on 2 cores) and provq-run in it

TEST_SOURCE = (
    f"videotestsrc is-live=true pattern=smpte num-buffers=600 ! video/x-raw,width={SIZE[0]},height={SIZE[1]},"
    "framerate=20/1 ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false"
)
GSTREAMER_OPENCV = "import cv2; print(cv2.__file__); print(cv2.getBuildInformation())"


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def jetson_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a venv of the system Python with --system-site-packages: Debian's OpenCV and numpy, provq from its
    wheel (built from this tree without network), onnxruntime at this venv's version (pip, from its index or cache)."""
    if not Path(SYSTEM_PYTHON).exists():
        require_system(f"no {SYSTEM_PYTHON}")
    probe = _run([SYSTEM_PYTHON, "-c", GSTREAMER_OPENCV], cwd=ROOT)
    gstreamer = any(line.split(":")[0].strip() == "GStreamer" and "YES" in line for line in probe.stdout.splitlines())
    if probe.returncode != 0 or not gstreamer:
        require_system("the system Python has no OpenCV with GStreamer (apt-get install python3-opencv)")
    work = tmp_path_factory.mktemp("jetson-venv")
    wheel = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work),
                  str(ROOT)], cwd=work)  # fmt: skip
    assert wheel.returncode == 0, wheel.stderr
    venv = work / "venv"
    made = _run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], cwd=work)
    if made.returncode != 0:
        require_system(f"python3 -m venv failed (apt-get install python3-venv): {made.stderr.strip()[-300:]}")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    provq = _run([*pip, "--no-index", *map(str, work.glob("provq-*.whl"))], cwd=work)
    assert provq.returncode == 0, provq.stderr
    ort = _run([*pip, f"onnxruntime=={onnxruntime.__version__}"], cwd=work)
    if ort.returncode != 0:
        require_system(f"pip could not install onnxruntime=={onnxruntime.__version__}: {ort.stderr.strip()[-300:]}")
    return venv / "bin"


def test_the_venv_uses_the_system_opencv_with_gstreamer(jetson_venv: Path, tmp_path: Path) -> None:
    code = (
        "import cv2, numpy; from provq.edge_runtime.source_uri import opencv_has; "
        "print(cv2.__file__, numpy.__version__, opencv_has('GStreamer'), opencv_has('FFMPEG'))"
    )
    done = _run([str(jetson_venv / "python"), "-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    location, numpy_version, gstreamer, ffmpeg = done.stdout.split()
    assert location.startswith("/usr/lib/python3/dist-packages/") and numpy_version.startswith("1.")
    assert gstreamer == "True" and ffmpeg == "True"
    pip_list = _run([str(jetson_venv / "python"), "-m", "pip", "list", "--local"], cwd=tmp_path).stdout
    assert "opencv" not in pip_list.lower() and "provq" in pip_list


def _provq_run(venv: Path, uri: str, work: Path, *extra: str) -> tuple[dict, str]:
    done = _run([str(venv / "provq-run"), uri, "recon/%06d.png", "--tokens", "t.ptok", "--json", "s.json", *extra],
                cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads((work / "s.json").read_text()), done.stderr


def _decodes_to_the_reconstructions(venv: Path, work: Path, frames: int) -> None:
    done = _run([str(venv / "provq-decode"), "t.ptok", "dec/%06d.png"], cwd=work)
    assert done.returncode == 0, done.stderr
    ours, decoded = read_pngs(work / "recon"), read_pngs(work / "dec")
    assert len(ours) == len(decoded) == frames
    assert all(np.array_equal(a, b) for a, b in zip(ours, decoded, strict=True))


def test_gst_videotestsrc_pipeline(jetson_venv: Path, tmp_path: Path) -> None:
    s, stderr = _provq_run(jetson_venv, f"gst://{TEST_SOURCE}", tmp_path, "--max-frames", "8")
    assert "GStreamer pipeline" in stderr and s["frames"] == 8 and s["size"] == list(SIZE) and s["gaps"] == []
    with TokenStreamReader(tmp_path / "t.ptok") as reader:
        assert reader.header.fps == 20 and (reader.header.width, reader.header.height) == SIZE
    _decodes_to_the_reconstructions(jetson_venv, tmp_path, 8)


def test_the_csi_pipeline_with_videotestsrc_for_the_camera(jetson_venv: Path, tmp_path: Path) -> None:
    """csi:// builds nvarguscamerasrc ! NVMM NV12 caps ! nvvidconv ! BGRx ! videoconvert ! BGR ! appsink; with the
    two Jetson elements swapped for videotestsrc and videoconvert the rest negotiates the asked size and rate."""
    pipeline = csi_pipeline(0, *SIZE, 15.0)
    for jetson, here in (("nvarguscamerasrc sensor-id=0", "videotestsrc is-live=true num-buffers=600"),
                         ("(memory:NVMM)", ""), ("nvvidconv", "videoconvert")):  # fmt: skip
        assert jetson in pipeline
        pipeline = pipeline.replace(jetson, here)
    s, _ = _provq_run(jetson_venv, f"gst://{pipeline}", tmp_path, "--max-frames", "6")
    assert s["frames"] == 6 and s["size"] == list(SIZE)
    with TokenStreamReader(tmp_path / "t.ptok") as reader:
        assert reader.header.fps == 15


def test_rtsp_through_gstreamer_and_through_ffmpeg(
    jetson_venv: Path, rtsp_servers: Callable[..., RtspServer], tmp_path: Path
) -> None:
    """The software-decoding rtspsrc pipeline provq uses where OpenCV lacks FFmpeg, as a gst:// URI; and rtsp://,
    which this OpenCV (with FFmpeg too) opens through FFmpeg."""
    server = rtsp_servers(("cam",), width=SIZE[0], height=SIZE[1], rate=10)
    (tmp_path / "gst").mkdir()
    s, stderr = _provq_run(jetson_venv, f"gst://{rtsp_pipeline(server.url())}", tmp_path / "gst", "--max-frames", "6")
    assert "GStreamer pipeline" in stderr and s["frames"] == 6 and s["size"] == list(SIZE)
    (tmp_path / "ffmpeg").mkdir()
    s, stderr = _provq_run(jetson_venv, server.url(), tmp_path / "ffmpeg", "--max-frames", "6")
    assert "RTSP stream (FFmpeg)" in stderr and s["frames"] == 6 and s["size"] == list(SIZE)


@pytest.mark.parametrize(
    ("pipeline", "named"),
    [("videotestsrc ! notanelement ! appsink", 'no element "notanelement"'), ("videotestsrc ! ! appsink", "")],
)
def test_a_pipeline_that_does_not_parse_is_one_line(jetson_venv: Path, tmp_path: Path, pipeline: str,
                                                     named: str) -> None:  # fmt: skip
    done = _run([str(jetson_venv / "provq-run"), f"gst://{pipeline}"], cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("provq-run: error: gst:// pipeline does not parse (") and named in lines[0]
