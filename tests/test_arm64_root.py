"""The README's Jetson install and the runtime in an emulated arm64 Debian root (tools/arm64_root.py).

Marker ``aarch64``: deselected unless asked for (``pytest -m aarch64 tests/test_arm64_root.py``, or
``PROVQ_CI_AARCH64=1 .ci/run``). It needs root, qemu-user-static and network access to the Debian mirror and PyPI
while the root is built (once, cached in ~/.cache/provq-arm64) and the project installed; under emulation on 2 x86
cores it takes tens of minutes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "arm64_root.py"


@pytest.mark.aarch64
def test_jetson_install_and_tokens_in_an_arm64_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")
    report_path = tmp_path / "arm64.json"
    done = subprocess.run(
        [sys.executable, str(TOOL), "--report", str(report_path)],
        capture_output=True, text=True, timeout=4 * 3600, check=False,
    )  # fmt: skip
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert done.returncode == 0 and "error" not in report, done.stderr[-3000:]
    assert report["root"]["machine"] == "aarch64"
    steps = report["steps"]
    assert [steps[name]["rc"] for name in ("install", "run", "decode", "bench", "numpy2_run")] == [0, 0, 0, 0, 2]
    numpy_line, cv2_line, _ort = steps["versions"]["tail"].splitlines()[-3:]
    # The venv keeps Debian's numpy 1.x, the one its python3-opencv is built against.
    assert numpy_line.startswith(report["root"]["python3-numpy"].split("-")[0].split(":")[-1])
    assert "/usr/lib/python3/dist-packages/" in numpy_line and "/usr/lib/python3/dist-packages/" in cv2_line
    doctor = steps["doctor"]["tail"]
    for line in ("ok       GStreamer:", "missing  TensorRT:", "ok       PyAV:", "ok       backend onnxruntime-cpu"):
        assert line in doctor, doctor
    # With a numpy 2 in the venv (the old install's failure), provq-run says so in one line, no traceback.
    broken = steps["numpy2_run"]["tail"]
    assert broken.startswith("provq-run: error: OpenCV (") and "pip install 'numpy<2'" in broken, broken
    assert len(broken.splitlines()) == 1 and "Traceback" not in broken
    ids = report["ids"]
    assert ids["frames"] == 80 and ids["agreement"] >= 0.999, ids


def test_the_tool_runs_the_readme_jetson_command() -> None:
    """The emulated run takes its install command from the README's Installing table, so the two cannot drift."""
    spec = importlib.util.spec_from_file_location("arm64_root", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    command = tool.jetson_install_command()
    assert command == 'python3 -m venv --system-site-packages .venv && .venv/bin/pip install ".[edge]"'
