"""TensorRT engine cache, builder, runner and CLI, against tests/fake_tensorrt.py (a FAKE TensorRT + cuda-python).

Nothing here touches a GPU: the fake checks how the real APIs are called (network flags, builder flags, profiles,
DLA, timing cache, tensor addresses, buffer sizes) and "runs" engines with a deterministic function of the input.
Version-gated paths run under a fake TensorRT 10.3.0 and a fake 11.4.1.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fake_tensorrt import FakeState, fake_decode, fake_encode, fake_onnx, make_modules

from provq.edge_runtime import engine_device
from provq.edge_runtime.backends import TensorRTBackend
from provq.edge_runtime.cameras import CameraPipeline
from provq.edge_runtime.cuda_shim import CudaError, CudaRuntime
from provq.edge_runtime.engine_device import DeviceInfo, read_l4t
from provq.edge_runtime.engine_meta import (
    check_sidecar,
    engine_file_name,
    make_meta,
    parse_engine_file_name,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from provq.edge_runtime.engine_shapes import ShapeProfile, parse_shape, shape_tag
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import load_manifest, sha256_file, write_json_atomic
from provq.edge_runtime.preprocess import prepare
from provq.edge_runtime.sources import open_source
from provq.edge_runtime.stream_state import PipelineConfig
from provq.edge_runtime.tokenstream import TokenStreamReader
from provq.edge_runtime.trt_runner import TensorRTRunner
from provq.export.engine import build_engine, make_request, plan_build, trtexec_command
from provq.export.engine_cli import engine_main

TESTS = Path(__file__).resolve().parent
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
    modules, state = make_modules(version, cuda_layout)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return state


@pytest.fixture(params=["10.3.0", "11.4.1"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeState:
    """The fake tensorrt + cuda-python in sys.modules, once per TensorRT major version."""
    return install_fake(monkeypatch, request.param)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path)


def one_line(err: pytest.ExceptionInfo[EdgeError]) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# -- names, shapes, sidecar ----------------------------------------------------------------------------------------


def test_engine_file_name_is_the_cache_key(model: Path) -> None:
    m = load_manifest(model)
    static = ShapeProfile(B1, B1, B1)
    batch = ShapeProfile(B1, B1, B4)
    assert engine_file_name(m, "encoder", "int8", batch, device=ORIN, trt_version="10.3.0.30") == (
        "3f9a01c2.encoder.int8.b1-4x256x256o1x256x256.orin-sm87.trt10.3.0.engine"
    )
    assert engine_file_name(
        m, "decoder", "fp16", static, device=DeviceInfo("NVIDIA H200", (9, 0)), trt_version="11.4.1", dla_core=0
    ) == ("3f9a01c2.decoder.fp16.b1x256x256.h200-sm90.trt11.4.1.dla0.engine")
    assert DeviceInfo("Jetson AGX Orin (64GB)/x", (8, 7)).tag == "jetson-agx-orin-64gb-x-sm87"
    assert (
        shape_tag(ShapeProfile((1, 3, 128, 128), (2, 3, 256, 384), (4, 3, 512, 512)))
        == "b1-4x128-512x128-512o2x256x384"
    )
    for profile in (
        static,
        batch,
        ShapeProfile(B1, B4, B4),
        ShapeProfile((1, 3, 64, 128), (1, 3, 64, 256), (1, 3, 64, 512)),
    ):
        name = engine_file_name(m, "encoder", "int8", profile, device=ORIN, trt_version="10.3.0", dla_core=1)
        parsed = parse_engine_file_name(name)
        assert parsed is not None and parsed["images"] == profile and parsed["dla_core"] == 1
        assert parsed["part"] == "encoder" and parsed["precision"] == "int8" and parsed["trt"] == "10.3.0"


def test_shapes_are_checked(model: Path) -> None:
    m = load_manifest(model)
    assert parse_shape("1x3x256x256") == B1
    for bad in ("1x3x256", "1x3x250x256", "0x3x256x256"):
        with pytest.raises(EdgeError):
            make_request(model, "encoder", "int8", opt_shape=parse_shape(bad))
    with pytest.raises(EdgeError, match="not like"):
        parse_shape("1,3,256,256")
    with pytest.raises(EdgeError, match="out of order") as err:
        make_request(model, "encoder", "int8", min_shape=B4, opt_shape=B1)
    one_line(err)
    request = make_request(model, "decoder", "fp32", min_shape=B1, max_shape=(4, 3, 512, 256))
    assert request.images == ShapeProfile(B1, (4, 3, 512, 256), (4, 3, 512, 256))
    assert request.profile == ShapeProfile((1, 32, 32), (4, 64, 32), (4, 64, 32))
    assert request.out_dir == m.directory / "engines"


def test_read_l4t(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n")
    assert read_l4t(release) == "36.4.3"
    assert read_l4t(tmp_path / "absent") is None


def _meta_for(model: Path, device: DeviceInfo = ORIN, trt: str = "10.3.0.30"):
    m = load_manifest(model)
    profile = ShapeProfile(B1, B1, B4)
    return m, make_meta(
        m, part="encoder", precision="int8", input_name="images", profile=profile, device=device, trt_version=trt,
        dla_core=None, onnx_file="encoder.int8.onnx", onnx_sha256=m.data["sha256"]["encoder.int8.onnx"],
        strongly_typed=True,
    )  # fmt: skip


def test_sidecar_round_trip(model: Path) -> None:
    m, meta = _meta_for(model)
    engine = (
        model
        / "engines"
        / engine_file_name(m, "encoder", "int8", meta.input_profile, device=ORIN, trt_version="10.3.0.30")
    )
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    write_sidecar(engine, meta)
    assert sidecar_path(engine).name.endswith(".engine.json")
    assert read_sidecar(engine) == meta
    data = json.loads(sidecar_path(engine).read_text())
    for key in ("tensorrt_version", "device_name", "compute_capability", "l4t", "jetpack", "precision", "part",
                "profile", "dla_core", "onnx_sha256", "codebook_sha256", "built_with", "created"):  # fmt: skip
        assert key in data
    assert data["format"] == "provq-engine" and data["compute_capability"] == "8.7" and data["l4t"] is None
    assert check_sidecar(engine, m, ORIN, "10.3.0.30") == meta


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ("device", "other device (built on Orin sm87, this is NVIDIA H200 sm90)"),
        ("trt", "other TensorRT version (built with 10.3.0.30, this is 10.13.0.35)"),
        ("l4t", "other L4T"),
        ("onnx", "other ONNX"),
        ("codebook", "other codebook"),
        ("sidecar", "missing sidecar"),
    ],
)
def test_stale_sidecar_is_refused_with_the_rebuild_command(model: Path, change: str, phrase: str) -> None:
    m, meta = _meta_for(model)
    engine = model / "x.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, meta)
    device, trt = ORIN, "10.3.0.30"
    if change == "device":
        device = DeviceInfo("NVIDIA H200", (9, 0))
    elif change == "trt":
        trt = "10.13.0.35"
    elif change == "l4t":
        device = DeviceInfo("Orin", (8, 7), "36.4.3")
    elif change == "onnx":
        data = json.loads((model / "manifest.json").read_text())
        data["sha256"]["encoder.int8.onnx"] = "0" * 64
        write_json_atomic(model / "manifest.json", data)
        m = load_manifest(model)
    elif change == "codebook":
        data = json.loads((model / "manifest.json").read_text())
        data["codebook_sha256"] = "9" * 64
        write_json_atomic(model / "manifest.json", data)
        m = load_manifest(model)
    else:
        sidecar_path(engine).unlink()
    with pytest.raises(EdgeError) as err:
        check_sidecar(engine, m, device, trt)
    text = one_line(err)
    assert phrase in text and f"provq-export engine {model}" in text and "--rebuild" in text
    if change != "sidecar":
        assert "--part encoder --precision int8 --min-shape 1x3x256x256 --opt-shape 1x3x256x256" in text
        assert "--max-shape 4x3x256x256" in text


# -- building ------------------------------------------------------------------------------------------------------


def test_int8_build_is_strongly_typed_and_reused(
    fake: FakeState, model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = build_engine(model, "encoder", "int8", min_shape=B1, max_shape=B4, workspace_mb=256)
    trt = sys.modules["tensorrt"]
    short = ".".join(fake.version.split(".")[:3])
    assert path == model / "engines" / f"3f9a01c2.encoder.int8.b1-4x256x256.orin-sm87.trt{short}.engine"
    assert len(fake.builds) == 1
    build = fake.builds[0]
    if fake.version.startswith("10."):
        bit = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert build["flags"] == bit == 2
    else:
        assert build["flags"] == 0  # 11.x: strongly typed always, the deprecated bit is never set
    assert build["strongly_typed"] and build["builder_flags"] == []
    assert build["workspace"] == 256 << 20 and build["verbosity"] == "DETAILED"
    assert build["profiles"] == [{"images": (B1, B4, B4)}]  # opt defaults to max
    assert build["device_type"] == "GPU"
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["onnx_file"] == "encoder.int8.onnx" and meta["precision"] == "int8" and meta["part"] == "encoder"
    assert meta["profile"] == {"input": "images", "min": list(B1), "opt": list(B4), "max": list(B4)}
    assert meta["tensorrt_version"] == fake.version and meta["device_name"] == "Orin" and meta["dla_core"] is None
    assert "trtexec equivalent: trtexec --onnx=" in caplog.text

    caplog.clear()
    assert build_engine(model, "encoder", "int8", min_shape=B1, max_shape=B4, workspace_mb=256) == path
    assert len(fake.builds) == 1, "a matching engine must be reused, not rebuilt"
    assert "reusing" in caplog.text


def test_decoder_profile_is_derived_from_image_shapes(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "decoder", "fp32", opt_shape=(2, 3, 128, 256))
    assert ".decoder.fp32.b2x128x256." in path.name
    assert fake.builds[0]["profiles"] == [{"ids": ((2, 16, 32),) * 3}]
    assert fake.builds[0]["strongly_typed"]


def test_stale_engine_is_refused_unless_rebuild(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "encoder", "int8")
    meta = json.loads(sidecar_path(path).read_text())
    meta["onnx_sha256"] = "0" * 64
    write_json_atomic(sidecar_path(path), meta)
    with pytest.raises(EdgeError) as err:
        build_engine(model, "encoder", "int8")
    text = one_line(err)
    assert "other ONNX" in text and f"provq-export engine {model} --part encoder --precision int8" in text
    assert text.endswith("--rebuild")
    assert len(fake.builds) == 1
    build_engine(model, "encoder", "int8", rebuild=True)
    assert len(fake.builds) == 2
    assert check_sidecar(path, load_manifest(model), ORIN, fake.version).onnx_sha256 != "0" * 64


def test_engine_from_another_device_is_refused(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "encoder", "fp32")
    meta = json.loads(sidecar_path(path).read_text())
    meta["device_name"], meta["compute_capability"] = "Thor", "11.0"
    write_json_atomic(sidecar_path(path), meta)
    with pytest.raises(EdgeError, match=r"other device \(built on Thor sm110, this is Orin sm87\)"):
        build_engine(model, "encoder", "fp32")


def test_fp16_on_tensorrt_10_uses_the_builder_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = install_fake(monkeypatch, "10.3.0")
    model = make_model_dir(tmp_path)
    path = build_engine(model, "encoder", "fp16")
    build = state.builds[0]
    assert build["flags"] == 0 and not build["strongly_typed"] and build["builder_flags"] == ["FP16"]
    meta = read_sidecar(path)
    assert meta.onnx_file == "encoder.onnx" and not meta.strongly_typed
    plan = plan_build(make_request(model, "encoder", "fp16"), "10.3.0", ORIN)
    command = trtexec_command(plan)
    assert "--fp16" in command and "--stronglyTyped" not in command


def test_fp16_onnx_is_preferred_and_strongly_typed(fake: FakeState, tmp_path: Path) -> None:
    model = make_model_dir(tmp_path, fp16=True)
    path = build_engine(model, "decoder", "fp16")
    build = fake.builds[0]
    assert build["strongly_typed"] and build["builder_flags"] == []
    assert read_sidecar(path).onnx_file == "decoder.fp16.onnx"


def test_fp16_on_tensorrt_11_needs_an_fp16_onnx(monkeypatch: pytest.MonkeyPatch, model: Path) -> None:
    state = install_fake(monkeypatch, "11.4.1")
    with pytest.raises(EdgeError) as err:
        build_engine(model, "encoder", "fp16")
    text = one_line(err)
    assert "no FP16 builder flag" in text and "no FP16 ONNX" in text and "export the model again" in text
    assert state.builds == []


def test_int8_needs_calibration(fake: FakeState, tmp_path: Path) -> None:
    model = make_model_dir(tmp_path, int8=False)
    with pytest.raises(EdgeError, match="provq-calibrate"):
        build_engine(model, "encoder", "int8")


def test_dla_refuses_dynamic_shapes_and_fp32(model: Path) -> None:
    with pytest.raises(EdgeError, match="DLA needs static shapes") as err:
        make_request(model, "encoder", "int8", min_shape=B1, max_shape=B4, dla_core=0)
    one_line(err)
    with pytest.raises(EdgeError, match="fp16 or int8"):
        make_request(model, "encoder", "fp32", dla_core=0)


def test_dla_build(fake: FakeState, model: Path) -> None:
    path = build_engine(model, "encoder", "int8", opt_shape=B1, dla_core=1)
    build = fake.builds[0]
    assert build["device_type"] == "DLA" and build["dla_core"] == 1 and build["builder_flags"] == ["GPU_FALLBACK"]
    assert path.name.endswith(".dla1.engine") and read_sidecar(path).dla_core == 1
    fake.dla_cores = 0
    with pytest.raises(EdgeError, match="has 0 DLA core") as err:
        build_engine(model, "decoder", "int8", dla_core=0)
    one_line(err)


def test_timing_cache_is_saved_and_reused(fake: FakeState, model: Path) -> None:
    build_engine(model, "encoder", "int8")
    caches = list((model / "engines").glob("timing.*.cache"))
    assert [c.name for c in caches] == [f"timing.orin-sm87.trt{'.'.join(fake.version.split('.')[:3])}.cache"]
    first = caches[0].read_bytes()
    assert fake.builds[0]["timing_cache_in"] == b"" and first
    build_engine(model, "decoder", "int8")
    assert fake.builds[1]["timing_cache_in"] == first
    assert caches[0].read_bytes().startswith(first) and len(caches[0].read_bytes()) > len(first)


def test_parser_errors_become_one_line(fake: FakeState, model: Path) -> None:
    data = json.loads((model / "encoder.onnx").read_text())
    data["error"] = ["node_argmin", "ArgMin", "Assertion failed: axis must be\nin the last 4 dims"]
    (model / "encoder.onnx").write_text(json.dumps(data))
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sha256"]["encoder.onnx"] = sha256_file(model / "encoder.onnx")
    write_json_atomic(model / "manifest.json", manifest)
    with pytest.raises(EdgeError) as err:
        build_engine(model, "encoder", "fp32")
    assert one_line(err) == (
        "TensorRT's ONNX parser rejected encoder.onnx at node node_argmin (ArgMin): Assertion failed: axis must be "
        "in the last 4 dims (+1 more)"
    )


def test_onnx_that_differs_from_its_manifest_is_refused(fake: FakeState, model: Path) -> None:
    (model / "encoder.int8.onnx").write_text("{}")
    with pytest.raises(EdgeError, match="does not match its manifest"):
        build_engine(model, "encoder", "int8")


def test_trtexec_command_per_version(model: Path) -> None:
    request = make_request(model, "encoder", "int8", min_shape=B1, max_shape=B4, workspace_mb=512)
    plan = plan_build(request, "10.3.0", ORIN)
    command = trtexec_command(plan)
    engines = model / "engines"
    assert command == (
        f"trtexec --onnx={model / 'encoder.int8.onnx'} "
        f"--saveEngine={engines / '3f9a01c2.encoder.int8.b1-4x256x256.orin-sm87.trt10.3.0.engine'} "
        "--minShapes=images:1x3x256x256 --optShapes=images:4x3x256x256 --maxShapes=images:4x3x256x256 "
        f"--memPoolSize=workspace:512M --timingCacheFile={engines / 'timing.orin-sm87.trt10.3.0.cache'} --stronglyTyped"
    )
    eleven = trtexec_command(plan_build(request, "11.4.1", ORIN))
    assert "--stronglyTyped" not in eleven and "--fp16" not in eleven and "trt11.4.1" in eleven
    dla = trtexec_command(plan_build(make_request(model, "decoder", "int8", dla_core=0), "10.3.0", ORIN))
    assert dla.endswith("--stronglyTyped --useDLACore=0 --allowGPUFallback")
    assert "--minShapes=ids:1x32x32" in dla


# -- running -------------------------------------------------------------------------------------------------------


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


# -- command line --------------------------------------------------------------------------------------------------


def test_cli_builds_both_parts(fake: FakeState, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_main([str(model), "--precision", "int8", "--max-shape", "2x3x256x256", "--workspace", "64"]) == 0
    out = capsys.readouterr().out
    assert out.count("trtexec --onnx=") == 2 and len(fake.builds) == 2
    assert "encoder.int8.b2x256x256" in out and "decoder.int8.b2x256x256" in out and "next: provq-run" in out
    assert engine_main([str(model), "--precision", "int8", "--max-shape", "2x3x256x256", "--workspace", "64"]) == 0
    assert len(fake.builds) == 2 and capsys.readouterr().out.count("reusing") == 2


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        ("--precision int8 --part encoder --min-shape 1x3x256x256 --max-shape 4x3x256x256 --dla 0",
         "DLA needs static shapes"),
        ("--precision int8 --opt-shape 1x3x250x256", "multiples of the model's downsample 8"),
        ("--precision fp32 --opt-shape big", "not like 1x3x256x256"),
    ],
)  # fmt: skip
def test_cli_user_errors(
    fake: FakeState, model: Path, capsys: pytest.CaptureFixture[str], args: str, phrase: str
) -> None:
    assert engine_main([str(model), *args.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("provq-export engine: error: ") and phrase in err
    assert fake.builds == []


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def _assert_cli_error(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("provq-export engine: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_missing_tensorrt_prints_the_trtexec_command(model: Path) -> None:
    done = _python(
        "import sys; sys.modules['tensorrt'] = None\n"
        "from provq.export.engine_cli import engine_main\n"
        f"sys.exit(engine_main([{str(model)!r}, '--precision', 'int8']))\n"
    )
    line = _assert_cli_error(
        done,
        "tensorrt is not installed: on a Jetson use JetPack's python3-libnvinfer (create the venv with "
        "--system-site-packages); the equivalent trtexec command is: trtexec --onnx=",
        "encoder.int8.onnx",
        "&& trtexec --onnx=",
        "decoder.int8.onnx --saveEngine=",
        "--stronglyTyped",
    )
    assert line.count("trtexec --onnx=") == 2


def test_missing_cuda_python_exits_2(model: Path) -> None:
    done = _python(
        f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
        "import fake_tensorrt; fake_tensorrt.install('10.3.0', cuda_layout='none')\n"
        "from provq.export.engine_cli import engine_main\n"
        f"sys.exit(engine_main([{str(model)!r}, '--precision', 'fp32', '--part', 'encoder']))\n"
    )
    _assert_cli_error(done, "cuda-python is not installed: pip install 'provq[edge]' (or use --backend onnxruntime)")


def test_engine_modules_import_without_torch() -> None:
    done = _python(
        "import sys; sys.modules['torch'] = None\n"
        "import provq.export.engine, provq.export.engine_cli, provq.edge_runtime.trt_runner\n"
        "import provq.edge_runtime.engine_meta, provq.edge_runtime.cuda_shim\n"
        "assert 'tensorrt' not in sys.modules and 'cuda' not in sys.modules, 'imports must be lazy'\n"
    )
    assert done.returncode == 0, done.stderr


# -- the batch dimension (several cameras per call) ---------------------------------------------------------------


def test_default_profile_batches_one_to_four_frames(fake: FakeState, model: Path) -> None:
    encoder = build_engine(model, "encoder", "int8")
    decoder = build_engine(model, "decoder", "int8")
    assert ".encoder.int8.b1-4x256x256." in encoder.name and ".decoder.int8.b1-4x256x256." in decoder.name
    assert fake.builds[0]["profiles"] == [{"images": (B1, B4, B4)}]  # tuned for the largest batch
    assert fake.builds[1]["profiles"] == [{"ids": ((1, 32, 32), (4, 32, 32), (4, 32, 32))}]


def test_max_batch_sets_the_profile_and_the_runtime_splits_larger_batches(
    fake: FakeState, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(model), "--precision", "int8", "--opt-shape", "1x3x64x96", "--max-batch", "2", "--workspace", "64"]
    assert engine_main(args) == 0
    out = capsys.readouterr().out
    assert "--minShapes=images:1x3x64x96 --optShapes=images:2x3x64x96 --maxShapes=images:2x3x64x96" in out
    assert "--minShapes=ids:1x8x12 --optShapes=ids:2x8x12 --maxShapes=ids:2x8x12" in out
    assert [b["profiles"] for b in fake.builds] == [
        [{"images": ((1, 3, 64, 96), (2, 3, 64, 96), (2, 3, 64, 96))}],
        [{"ids": ((1, 8, 12), (2, 8, 12), (2, 8, 12))}],
    ]
    backend = TensorRTBackend(load_manifest(model), "int8")
    try:
        assert backend.max_batch == 2
        with pytest.raises(EdgeError, match=r"encoder input 3x3x64x96 is outside the engine's profile") as err:
            backend.encode(np.zeros((3, 3, 64, 96), np.float32))
        one_line(err)
        folders = []
        for i in range(3):  # three cameras of 96 x 64 frames, four frames each
            folder = tmp_path / f"cam{i}"
            folder.mkdir()
            for k in range(4):
                cv2.imwrite(str(folder / f"{k}.png"), np.full((64, 96, 3), 40 * i + 10 * k, np.uint8))
            folders.append(folder)
        sources = [open_source(str(f)) for f in folders]
        configs = [PipelineConfig(tokens=tmp_path / f"{i}.ptok", codec="zlib") for i in range(3)]  # no codebook here
        before = fake.executions
        report = CameraPipeline(sources, backend, configs).run()
    finally:
        backend.close()
    assert report.calls == 4 * 2 and fake.executions - before == 4 * 2  # each round of 3 frames: calls of 2 + 1
    for i in range(3):
        with TokenStreamReader(tmp_path / f"{i}.ptok") as reader:
            ids = [frame.ids for frame in reader.frames()]
        expected = [fake_encode(prepare(cv2.imread(str(folders[i] / f"{k}.png")), DS, "pad")[0], DS)[0]
                    for k in range(4)]  # fmt: skip
        assert len(ids) == 4 and all(np.array_equal(a, b) for a, b in zip(ids, expected, strict=True))


def test_max_batch_on_dla_is_static(fake: FakeState, model: Path) -> None:
    build_engine(model, "encoder", "int8", opt_shape=B1, max_batch=2, dla_core=0)
    assert fake.builds[0]["profiles"] == [{"images": ((2, 3, 256, 256),) * 3}]
    with pytest.raises(EdgeError, match="--max-batch must be at least 1"):
        make_request(model, "encoder", "int8", max_batch=0)
