"""A deliberately small FAKE of the TensorRT and cuda-python runtime APIs that provq uses. It is not TensorRT.

It exists so that the engine builder, the engine cache and ``TensorRTRunner`` can be tested on a machine without a
GPU, TensorRT or CUDA. It computes nothing real:

- the "ONNX parser" reads a small JSON description written by the tests into ``*.onnx`` files (input name, shape,
  dtype, output, kind, factor), or fails with a parser error when the JSON says ``"error"``;
- the "builder" checks how it was configured (network flags, builder flags, profile, DLA, timing cache), records
  that in ``FakeState.builds`` and returns a JSON "plan";
- the "engine" runs by filling its output with a deterministic function of its input (``fake_encode`` /
  ``fake_decode``), reading and writing fake device memory, so buffer sizes, copies and addresses are checked;
- the "CUDA runtime" keeps device memory as bytearrays keyed by fake addresses, and copies to and from real host
  arrays by address (ctypes), refusing copies that overrun an allocation.

``make_modules(version)`` builds fresh ``tensorrt`` and ``cuda`` modules for TensorRT "10.3.0" or "11.4.1", whose
differences mirror the real ones provq cares about: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is 1 on 10.x
and 0 on 11.x (where networks are always strongly typed), and 11.x has no ``BuilderFlag.FP16`` / ``INT8``.

The fake is split by what it does: tests/fake_trt_state.py (the shared state, the fake computation and the fake
ONNX files), tests/fake_trt_builder.py (parser and builder), tests/fake_trt_runtime.py (runtime, engine, context)
and tests/fake_cudart.py (cuda-python). Tests import it from here.
"""

from __future__ import annotations

import enum
import functools
import sys
from types import ModuleType

from fake_cudart import make_cudart
from fake_trt_builder import FakeBuilder, FakeLogger, FakeOnnxParser
from fake_trt_runtime import FakeRuntime
from fake_trt_state import FakeState, fake_decode, fake_encode, fake_onnx

__all__ = ["FakeState", "fake_decode", "fake_encode", "fake_onnx", "install", "make_modules"]

IS_FAKE = True


def _make_tensorrt(state: FakeState) -> ModuleType:
    major = int(state.version.split(".")[0])
    trt = ModuleType("tensorrt", "FAKE tensorrt for tests (tests/fake_tensorrt.py); computes nothing real")
    trt.__version__ = state.version
    trt.IS_FAKE = True
    trt.Logger = FakeLogger
    if major == 10:
        network_flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        flags = ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "STRICT_TYPES"]
    else:
        network_flags = {"STRONGLY_TYPED": 0}  # deprecated and ignored in 11.x; note the different value
        flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "TF32"]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "TACTIC_DRAM"])
    trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64"])
    trt.Builder = functools.partial(FakeBuilder, state, trt)
    trt.Runtime = functools.partial(FakeRuntime, state, trt)
    trt.OnnxParser = FakeOnnxParser
    return trt


def make_modules(
    version: str = "10.3.0", cuda_layout: str = "bindings"
) -> tuple[dict[str, ModuleType | None], FakeState]:
    """Fresh fake modules for ``sys.modules`` and the state they share.

    ``cuda_layout``: "bindings" (``cuda.bindings.runtime``, cuda-python >= 12.6), "old" (``cuda.cudart`` only), or
    "none" (cuda-python missing: the ``cuda`` entries are None, so importing them fails).
    """
    state = FakeState(version=version)
    modules: dict[str, ModuleType | None] = {"tensorrt": _make_tensorrt(state)}
    cudart = make_cudart(state)
    if cuda_layout == "bindings":
        cuda, bindings = ModuleType("cuda"), ModuleType("cuda.bindings")
        cuda.__path__, bindings.__path__ = [], []  # packages, so submodule imports resolve through sys.modules
        bindings.runtime = cudart
        cuda.bindings = bindings
        modules.update({"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart})
    elif cuda_layout == "old":
        cuda = ModuleType("cuda")
        cuda.__path__ = []
        cuda.cudart = cudart
        modules.update({"cuda": cuda, "cuda.cudart": cudart, "cuda.bindings": None, "cuda.bindings.runtime": None})
    else:
        modules.update({"cuda": None, "cuda.bindings": None, "cuda.bindings.runtime": None, "cuda.cudart": None})
    return modules, state


def install(version: str = "10.3.0", cuda_layout: str = "bindings") -> FakeState:
    """Put the fakes into ``sys.modules`` for good (for subprocess tests; pytest tests use the fixture instead)."""
    modules, state = make_modules(version, cuda_layout)
    sys.modules.update(modules)
    return state
