"""``provq-doctor``: what this machine has for provq's runtime, and for each missing piece the command that fixes it.

    provq-doctor            # one line per component, then one line per backend
    provq-doctor --json     # the same as JSON

The first thing to run on a Jetson. It reports the platform (machine, Python, the venv and whether it sees the
system site-packages), the L4T release (/etc/nv_tegra_release) and JetPack (the ``nvidia-jetpack`` package) where
present, numpy, OpenCV (version, file, GStreamer and FFmpeg in its build), ONNX Runtime (version, execution
providers), onnx, TensorRT, the CUDA driver (``libcuda.so.1``, the CUDA version it supports) and toolkit,
cuda-python (and the CUDA toolkit it must match) and zstandard; then, for each backend,
whether it can run here and, if not, what is missing with the command that fixes it. Every probe is a real import
or file read: nothing is downloaded, no GPU is touched beyond loading its libraries (the driver is asked only for its
version, ``cuDriverGetVersion``, which needs no ``cuInit``), torch is never imported.
Exit status 0 when OpenCV imports and at least one backend can run, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import EdgeError
from .formats.versions import package_version
from .opencv_import import ON_ARM, import_cv2

PROG = "provq-doctor"
OK, MISSING, INFO = "ok", "missing", "info"
CUDA_VERSION_FILE = Path("/usr/local/cuda/version.json")
CUDA_DRIVER = "libcuda.so.1"  # the NVIDIA driver's CUDA library (on a Jetson under /usr/lib/aarch64-linux-gnu/tegra)
INSTALL_DRIVER = (
    "the driver comes with the Jetson's L4T release: flash JetPack (SDK Manager), then sudo apt install nvidia-jetpack"
    if ON_ARM
    else "install the NVIDIA driver for this machine's GPU (e.g. sudo apt install nvidia-driver); the onnxruntime-cpu "
    "backend needs none"
)
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
INSTALL_ORT = (
    "NVIDIA's onnxruntime-gpu wheel for your JetPack (Jetson AI Lab or a source build; PyPI's onnxruntime-gpu has "
    "no aarch64 build), or PyPI's CPU build: pip install onnxruntime"
    if ON_ARM
    else "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine; never both in one environment)"
)
INSTALL_ORT_GPU = (
    "install NVIDIA's onnxruntime-gpu wheel for your JetPack (Jetson AI Lab or a source build) instead of onnxruntime"
    if ON_ARM
    else "on a machine with an NVIDIA GPU: pip uninstall onnxruntime && pip install onnxruntime-gpu"
)


@dataclass(frozen=True)
class Check:
    """One line of the report: a component or a backend, its state (ok, missing, info), what was found, the fix."""

    name: str
    state: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix else ""
        return f"  {self.state:<8} {self.name}: {self.detail}{fix}"


def _version(*dists: str) -> str | None:
    """The version of the first of ``dists`` that is installed (``package_version``); None when none is."""
    return next(filter(None, map(package_version, dists)), None)


def _environment() -> str:
    """Where this Python runs: a venv (and whether it sees the system site-packages) or the system itself."""
    if sys.prefix == sys.base_prefix:
        return f"system Python {sys.executable}"
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    text = cfg.read_text(encoding="utf-8", errors="replace") if cfg.is_file() else ""
    system = any(
        line.split("=", 1)[0].strip() == "include-system-site-packages" and line.split("=", 1)[1].strip() == "true"
        for line in text.splitlines()
        if "=" in line
    )
    return f"venv {sys.prefix} ({'with' if system else 'without'} system site-packages)"


def _jetson() -> Check:
    from .engine_device import TEGRA_RELEASE, read_l4t

    l4t = read_l4t()
    if l4t is None:
        return Check("JetPack/L4T", INFO, f"not a Jetson (no {TEGRA_RELEASE})")
    jetpack = None
    if shutil.which("dpkg-query"):
        done = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "nvidia-jetpack"], check=False, capture_output=True, text=True
        )
        jetpack = done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
    return Check("JetPack/L4T", OK, f"L4T {l4t}, JetPack {jetpack or 'package nvidia-jetpack not installed'}")


def _numpy() -> Check:
    try:
        import numpy
    except ImportError as err:
        return Check("numpy", MISSING, f"does not import ({err})", "pip install numpy")
    return Check("numpy", OK, f"{numpy.__version__} ({Path(numpy.__file__).parent})")


def _opencv() -> list[Check]:
    try:
        cv2 = import_cv2()
    except EdgeError as err:
        problem, _, fix = str(err).partition(": ")
        return [Check("OpenCV", MISSING, problem, fix or None)]
    from .source_uri import GSTREAMER_FIX, opencv_has

    dist = _version("opencv-python-headless", "opencv-python", "opencv-contrib-python")
    origin = f"PyPI wheel {dist}" if dist else "not from pip (a system package)"
    ffmpeg = "FFmpeg yes" if opencv_has("FFMPEG") else "FFmpeg no"
    checks = [Check("OpenCV", OK, f"{cv2.__version__}, {origin} ({cv2.__file__}), {ffmpeg}")]
    if opencv_has("GStreamer"):
        checks.append(Check("GStreamer", OK, "in this OpenCV's build: csi:// and gst:// can open"))
    else:
        checks.append(Check("GStreamer", MISSING, "not in this OpenCV's build: csi:// and gst:// cannot open",
                            GSTREAMER_FIX))  # fmt: skip
    return checks


def _onnxruntime() -> tuple[Check, list[str]]:
    try:
        import onnxruntime
    except ImportError as err:
        return Check("ONNX Runtime", MISSING, f"does not import ({' '.join(str(err).split())})", INSTALL_ORT), []
    providers = list(onnxruntime.get_available_providers())
    found = f"{onnxruntime.__version__} ({Path(onnxruntime.__file__).parent}), providers {', '.join(providers)}"
    return Check("ONNX Runtime", OK, found), providers


def _onnx() -> Check:
    try:
        import onnx
    except ImportError:
        return Check("onnx", MISSING, "not installed: provq-calibrate, provq-export check and --stable-tokens need it",
                     "pip install onnx")  # fmt: skip
    return Check("onnx", OK, str(onnx.__version__))


def _tensorrt() -> Check:
    from .engine_device import import_tensorrt

    try:
        trt = import_tensorrt()
    except EdgeError as err:
        problem, _, fix = str(err).partition(": ")
        if not ON_ARM and "not installed" in problem:
            fix = f"{fix}; on an x86 machine with an NVIDIA GPU: pip install tensorrt"
        return Check("TensorRT", MISSING, problem, fix or None)
    return Check("TensorRT", OK, f"{trt.__version__} ({Path(trt.__file__).parent})")


def _cuda_toolkit() -> str | None:
    """The CUDA toolkit's version from /usr/local/cuda/version.json, None without one."""
    if not CUDA_VERSION_FILE.is_file():
        return None
    return json.loads(CUDA_VERSION_FILE.read_text(encoding="utf-8")).get("cuda", {}).get("version")


def _cuda_driver() -> Check:
    """The NVIDIA driver's CUDA library and the CUDA version it supports (major.minor), with the toolkit's."""
    try:
        driver = ctypes.CDLL(CUDA_DRIVER)
    except OSError:
        return Check("CUDA", MISSING, f"no NVIDIA driver ({CUDA_DRIVER} does not load): the GPU backends cannot run",
                     INSTALL_DRIVER)  # fmt: skip
    version = ctypes.c_int(0)
    if driver.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return Check("CUDA", MISSING, f"{CUDA_DRIVER} loads but cuDriverGetVersion failed", INSTALL_DRIVER)
    supports = f"{version.value // 1000}.{version.value % 1000 // 10}"
    return Check("CUDA", OK, f"driver supports CUDA {supports}, toolkit {_cuda_toolkit() or 'not found'}")


def _cuda_python() -> Check:
    from .cuda_shim import import_cudart

    version = _version("cuda-python", "cuda-bindings")
    try:
        import_cudart()
    except EdgeError as err:
        problem, _, fix = str(err).partition(": ")
        return Check("cuda-python", MISSING, problem, fix or None)
    toolkit = _cuda_toolkit()
    if version and toolkit and version.split(".")[0] != toolkit.split(".")[0]:
        major = toolkit.split(".")[0]
        return Check("cuda-python", MISSING, f"{version} is for CUDA {version.split('.')[0]}, this system has CUDA "
                     f"{toolkit}", f"pip install 'cuda-python>={major},<{int(major) + 1}'")  # fmt: skip
    return Check("cuda-python", OK, f"{version or 'version unknown'}, CUDA toolkit {toolkit or 'not found'}")


def _pyav() -> Check:
    version = _version("av")
    if version is None:
        return Check("PyAV", MISSING, "not installed: video files decode through OpenCV, whose colour conversion "
                     "differs between CPU architectures (so do the tokens)", "pip install av")  # fmt: skip
    return Check("PyAV", OK, f"{version}: video files decode to the same pixels on every CPU")


def _zstandard() -> Check:
    version = _version("zstandard")
    if version is None:
        return Check("zstandard", MISSING, "not installed: --codec zstd needs it", "pip install zstandard")
    return Check("zstandard", OK, version)


def _backends(ort: Check, providers: list[str], driver: Check, trt: Check, cuda: Check) -> list[Check]:
    backends = []
    if ort.state == OK and "CPUExecutionProvider" in providers:
        backends.append(Check("backend onnxruntime-cpu", OK, "runs here"))
    else:
        backends.append(Check("backend onnxruntime-cpu", MISSING, "needs ONNX Runtime", INSTALL_ORT))
    gpu = [p for p in ORT_GPU_PROVIDERS if p in providers]
    if gpu and driver.state == OK:
        backends.append(Check("backend onnxruntime-gpu", OK, f"providers {', '.join(gpu)} are available"))
    elif gpu:
        backends.append(Check("backend onnxruntime-gpu", MISSING, f"providers {', '.join(gpu)} but {driver.detail}",
                              driver.fix))  # fmt: skip
    else:
        have = f"this ONNX Runtime has no TensorRT or CUDA provider ({', '.join(providers)})" if providers else (
            "needs an ONNX Runtime GPU build")  # fmt: skip
        backends.append(Check("backend onnxruntime-gpu", MISSING, have, INSTALL_ORT_GPU))
    missing = [c for c in (trt, cuda, driver) if c.state != OK]
    if missing:
        fixes = "; ".join(f"{c.name}: {c.fix}" for c in missing if c.fix)
        what = " and ".join(c.name for c in missing)
        backends.append(Check("backend tensorrt", MISSING, f"needs {what}", fixes or None))
    else:
        backends.append(Check("backend tensorrt", OK, "imports; build engines with provq-export engine MODEL_DIR"))
    return backends


def diagnose() -> tuple[str, list[Check], list[Check]]:
    """(platform line, component checks, backend checks), from real imports and file reads on this machine."""
    head = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, {_environment()}"
    opencv = _opencv()
    ort, providers = _onnxruntime()
    driver, trt, cuda = _cuda_driver(), _tensorrt(), _cuda_python()
    components = [_jetson(), _numpy(), *opencv, ort, _onnx(), trt, driver, cuda, _pyav(), _zstandard()]
    return head, components, _backends(ort, providers, driver, trt, cuda)


def main(argv: list[str] | None = None) -> int:
    intro, more = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog=PROG, description=intro, epilog=more,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    head, components, backends = diagnose()
    ok = all(c.state == OK for c in components if c.name == "OpenCV") and any(b.state == OK for b in backends)
    if args.json:
        report = {"platform": head, "components": [asdict(c) for c in components],
                  "backends": [asdict(b) for b in backends], "ok": ok}  # fmt: skip
        print(json.dumps(report, indent=2))
    else:
        print(f"{PROG}: {head}")
        print("\n".join(c.line() for c in [*components, *backends]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
