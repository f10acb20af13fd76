"""provq-doctor on this machine (real imports of what is installed here) and the one-line OpenCV import errors.

What the doctor must find is worked out independently of it: from ``importlib.util.find_spec``, OpenCV's own build
information, ONNX Runtime's provider list and the dynamic linker's cache (``ctypes.util.find_library``), so the
tests hold on a box with or without TensorRT or a GPU.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import onnxruntime
import pytest

from provq.edge_runtime import doctor
from provq.edge_runtime.opencv_import import explain


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from provq.edge_runtime.doctor import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, check=False)


def _gstreamer_in_build() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip() == "GStreamer":
            return value.strip().startswith("YES")
    return False


@pytest.fixture(scope="module")
def report() -> dict:
    done = _doctor("--json")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    return {c["name"]: c for c in data["components"] + data["backends"]} | {"_ok": data["ok"]}


def test_components_found_here(report: dict) -> None:
    assert report["OpenCV"]["state"] == "ok" and cv2.__version__ in report["OpenCV"]["detail"]
    assert report["ONNX Runtime"]["state"] == "ok"
    assert onnxruntime.__version__ in report["ONNX Runtime"]["detail"]
    for provider in onnxruntime.get_available_providers():
        assert provider in report["ONNX Runtime"]["detail"]
    assert report["backend onnxruntime-cpu"]["state"] == "ok" and report["_ok"] is True
    tegra = Path("/etc/nv_tegra_release").exists()
    assert report["JetPack/L4T"]["state"] == ("ok" if tegra else "info")


def test_missing_pieces_each_have_a_fix(report: dict) -> None:
    """On a box without TensorRT, the NVIDIA driver, CUDA bindings or a GStreamer OpenCV, each is named missing with
    its command."""
    expected = {
        "GStreamer": not _gstreamer_in_build(),
        "TensorRT": importlib.util.find_spec("tensorrt") is None,
        "cuda-python": importlib.util.find_spec("cuda") is None,
        "PyAV": importlib.util.find_spec("av") is None,
        "backend onnxruntime-gpu": not {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
        & set(onnxruntime.get_available_providers()),
    }
    expected["CUDA"] = ctypes.util.find_library("cuda") is None  # libcuda.so.1: the NVIDIA driver
    expected["backend tensorrt"] = expected["TensorRT"] or expected["cuda-python"] or expected["CUDA"]
    for name, missing in expected.items():
        assert (report[name]["state"] == "missing") == missing, report[name]
        if missing:
            assert report[name]["fix"], report[name]
    if expected["GStreamer"]:
        assert "python3-opencv" in report["GStreamer"]["fix"] and "--system-site-packages" in report["GStreamer"]["fix"]
    if expected["TensorRT"]:
        assert "python3-libnvinfer" in report["TensorRT"]["fix"] and "pip install tensorrt" in report["TensorRT"]["fix"]
        assert "TensorRT" in report["backend tensorrt"]["detail"]
    if expected["CUDA"]:
        assert "no NVIDIA driver" in report["CUDA"]["detail"] and "CUDA" in report["backend tensorrt"]["detail"]
    if expected["cuda-python"]:
        assert "pip install 'provq[edge]'" in report["cuda-python"]["fix"]
    if expected["PyAV"]:
        assert report["PyAV"]["fix"] == "pip install av" and "CPU architectures" in report["PyAV"]["detail"]
    else:
        assert importlib.metadata.version("av") in report["PyAV"]["detail"]


def test_text_report_is_one_line_per_check() -> None:
    done = _doctor()
    assert done.returncode == 0 and not done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"provq-doctor: Linux {doctor.platform.machine()}, Python ")
    _head, components, backends = doctor.diagnose()
    assert len(lines) == 1 + len(components) + len(backends)
    for line, check in zip(lines[1:], [*components, *backends], strict=True):
        assert line.split()[0] == check.state and f"{check.name}:" in line
        assert ("-> fix: " in line) == (check.fix is not None)


def test_doctor_never_imports_torch() -> None:
    code = "import sys; from provq.edge_runtime.doctor import diagnose; diagnose(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.strip() == "False"


# -- OpenCV that does not import ----------------------------------------------------------------------------------


BROKEN_CV2 = """
import sys
sys.stderr.write("A module that was compiled using NumPy 1.x cannot be run in NumPy 2.x\\n")
sys.stderr.write("Traceback (most recent call last):\\n")
raise ImportError("numpy.core.multiarray failed to import")
"""  # what Debian's or JetPack's cv2 (built against numpy 1.x) does under a numpy 2


def _command(name: str, fake: Path | None, hide_cv2: bool = False) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys
        {"sys.path.insert(0, " + repr(str(fake)) + ")" if fake else ""}
        {"sys.modules['cv2'] = None" if hide_cv2 else ""}
        from provq.edge_runtime import commands
        sys.argv = ["{name}", "sample://"] if "{name}" == "provq-run" else ["{name}"]
        sys.exit(getattr(commands, "{name}".split("-")[1])())
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("name", ["provq-run", "provq-decode", "provq-bench"])
def test_cv2_built_for_numpy1_is_one_line(tmp_path: Path, name: str) -> None:
    import numpy

    assert int(numpy.__version__.split(".")[0]) >= 2, "this test needs numpy 2 installed, as a shadowing venv has"
    (tmp_path / "cv2.py").write_text(BROKEN_CV2, encoding="utf-8")
    done = _command(name, tmp_path)
    assert done.returncode == 2 and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"{name}: error: OpenCV (") and f"numpy {numpy.__version__}" in lines[0]
    assert lines[0].endswith(f"{sys.executable} -m pip install 'numpy<2'")


def test_missing_cv2_is_one_line() -> None:
    done = _command("provq-run", None, hide_cv2=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("provq-run: error: OpenCV (cv2) is not installed: ")
    assert "opencv-python-headless" in lines[0]  # the fix off aarch64


def test_explain_names_the_import_error() -> None:
    line = explain(ImportError("libGL.so.1: cannot open shared object file"))
    assert "libGL.so.1" in line and "reinstall it" in line and "\n" not in line


def test_doctor_reports_a_broken_cv2(tmp_path: Path) -> None:
    (tmp_path / "cv2.py").write_text(BROKEN_CV2, encoding="utf-8")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from provq.edge_runtime import doctor; "
    code += "sys.exit(doctor.main([]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    [line] = [x for x in done.stdout.splitlines() if " OpenCV:" in x]
    assert line.split()[0] == "missing" and "pip install 'numpy<2'" in line
