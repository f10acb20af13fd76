"""``TensorRTRunner`` and the cuda-python shim against the FAKE TensorRT + cuda-python of tests/fake_tensorrt.py:
buffers, copies, dtypes, shape checks, stale engines and missing cuda-python. The fake "runs" engines with a
deterministic function of the input; nothing here touches a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import B1, B4, DS, ORIN, install_fake, one_line
from fake_tensorrt import FakeState, fake_decode, fake_encode

from provq.edge_runtime import engine_device
from provq.edge_runtime.cuda_shim import CudaError, CudaRuntime
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import load_manifest, write_json_atomic
from provq.edge_runtime.trt_runner import TensorRTRunner
from provq.export.engine import build_engine


def test_runner_reuses_and_regrows_buffers(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "encoder", "int8", min_shape=(1, 3, 64, 64), opt_shape=B1, max_shape=B4)
    rng = np.random.default_rng(0)
    with TensorRTRunner(path, load_manifest(model)) as runner:
        assert (runner.part, runner.precision, runner.input_name, runner.output_name) == (
            "encoder",
            "int8",
            "images",
            "ids",
        )
        x = rng.uniform(-1, 1, B1).astype(np.float32)
        ids = runner.run(x)
        assert ids.dtype == np.int32 and ids.shape == (1, 32, 32)
        np.testing.assert_array_equal(ids, fake_encode(x, DS))
        assert fake.mallocs == [x.nbytes, ids.nbytes]
        assert all(s.pending == 0 for s in fake.streams.values()), "results read before the stream was synchronized"

        runner.run(rng.uniform(-1, 1, (1, 3, 64, 128)))  # smaller (float64 is cast): no new buffers
        assert len(fake.mallocs) == 2 and fake.frees == 0

        x4 = rng.uniform(-1, 1, B4).astype(np.float32)
        np.testing.assert_array_equal(runner.run(x4), fake_encode(x4, DS))
        assert fake.mallocs[2:] == [x4.nbytes, x4.nbytes // 3 // DS // DS] and fake.frees == 2  # regrown once

        runner.run(x)
        assert len(fake.mallocs) == 4 and fake.executions == 4

        with pytest.raises(EdgeError) as err:
            runner.run(np.zeros((1, 3, 512, 512), np.float32))
        text = one_line(err)
        assert "encoder input 1x3x512x512 is outside the engine's profile 1x3x64x64..4x3x256x256" in text
        assert "--min-shape 1x3x64x64 --opt-shape 1x3x256x256 --max-shape 4x3x512x512 --rebuild" in text
        with pytest.raises(EdgeError, match="must have 4 dimensions"):
            runner.run(np.zeros((3, 256, 256), np.float32))
        assert fake.executions == 4
    assert fake.memory == {} and fake.streams == {} and fake.frees == 4
    runner.close()  # idempotent
    with pytest.raises(EdgeError, match="closed"):
        runner.run(x)


def test_runner_decodes_and_checks_dtypes(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "decoder", "fp32", min_shape=B1, max_shape=B4)
    ids = np.arange(2 * 32 * 32, dtype=np.int64).reshape(2, 32, 32) % 1024
    with TensorRTRunner(path, load_manifest(model)) as runner:
        images = runner.run(ids)
        assert images.dtype == np.float32 and images.shape == (2, 3, 256, 256)
        np.testing.assert_array_equal(images, fake_decode(ids.astype(np.int32), DS))
        with pytest.raises(EdgeError, match="must be int32, got float32"):
            runner.run(ids.astype(np.float32))
        with pytest.raises(EdgeError, match=r"decoder input 1x64x64 .*--max-shape 4x3x512x512"):
            runner.run(np.zeros((1, 64, 64), np.int32))


def test_runner_checks_the_sidecar_before_deserializing(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "encoder", "int8")
    fake.device_name, fake.compute_capability = "NVIDIA H200", (9, 0)
    with pytest.raises(EdgeError) as err:
        TensorRTRunner(path, load_manifest(model))
    assert "other device" in one_line(err) and "--rebuild" in str(err.value)
    assert fake.deserialized == 0 and fake.streams == {}


def test_runner_refuses_an_engine_of_another_model(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "encoder", "fp32")
    data = json.loads((model / "manifest.json").read_text())
    data["tensors"]["encoder"]["input"] = "frames"
    write_json_atomic(model / "manifest.json", data)
    with pytest.raises(EdgeError, match=r"has inputs \['images'\]"):
        TensorRTRunner(path, load_manifest(model))


# -- cuda-python shim ----------------------------------------------------------------------------------------------


def test_cuda_shim_falls_back_to_old_cuda_python_and_names_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    state = install_fake(monkeypatch, "10.3.0", cuda_layout="old")
    cuda = CudaRuntime.load()
    assert engine_device.probe_device(cuda) == ORIN
    state.memory_limit = 100
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        cuda.malloc(1000)
    state.no_device = True
    with pytest.raises(EdgeError, match=r"no usable CUDA device .*cudaErrorNoDevice"):
        engine_device.probe_device(cuda)


def test_missing_cuda_python_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch, "10.3.0", cuda_layout="none")
    with pytest.raises(EdgeError) as err:
        CudaRuntime.load()
    assert one_line(err) == "cuda-python is not installed: pip install 'provq[edge]' (or use --backend onnxruntime)"
