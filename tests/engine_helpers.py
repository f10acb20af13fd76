"""Shared pieces of the engine tests (tests/test_engine_*.py): a tiny model directory of fake ONNX files, the fake
TensorRT put into ``sys.modules``, shapes and the one-line error check. The fixtures ``fake`` and ``model`` that
use them are in tests/conftest.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fake_tensorrt import FakeState, fake_onnx, make_modules

from provq.edge_runtime.engine_device import DeviceInfo
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import sha256_file, write_json_atomic

CODEBOOK = "3f9a01c2" + "ab" * 28
DS = 8
ORIN = DeviceInfo("Orin", (8, 7), None)
B1 = (1, 3, 256, 256)
B4 = (4, 3, 256, 256)


def make_model_dir(root: Path, *, int8: bool = True, fp16: bool = False) -> Path:
    """A tiny model directory: manifest.json plus dummy .onnx files holding the fake parser's JSON (not ONNX)."""
    directory = root / "model"
    directory.mkdir(parents=True)
    files = {"fp32": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}}
    if int8:
        files["int8"] = {"encoder": "encoder.int8.onnx", "decoder": "decoder.int8.onnx"}
    if fp16:
        files["fp16"] = {"encoder": "encoder.fp16.onnx", "decoder": "decoder.fp16.onnx"}
    tensors = {"encoder": {"input": "images", "output": "ids"}, "decoder": {"input": "ids", "output": "images"}}
    sha = {}
    for precision, parts in files.items():
        for part, name in parts.items():
            names = tensors[part]
            (directory / name).write_text(fake_onnx(part, names["input"], names["output"], DS, precision=precision))
            sha[name] = sha256_file(directory / name)
    manifest = {"format": "provq-model", "version": 1, "preset": "tiny", "downsample": DS, "codebook_size": 1024,
                "code_dim": 16, "codebook_sha256": CODEBOOK, "files": files, "tensors": tensors, "sha256": sha,
                "opset": 17}  # fmt: skip
    write_json_atomic(directory / "manifest.json", manifest)
    return directory


def install_fake(monkeypatch: pytest.MonkeyPatch, version: str, cuda_layout: str = "bindings") -> FakeState:
    """Fresh fake tensorrt + cuda modules in ``sys.modules`` for this test (undone by ``monkeypatch``)."""
    modules, state = make_modules(version, cuda_layout)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return state


def one_line(err: pytest.ExceptionInfo[EdgeError]) -> str:
    """The error's message, asserting that it is one line."""
    text = str(err.value)
    assert "\n" not in text, text
    return text
