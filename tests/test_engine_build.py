"""Building TensorRT engines with ``build_engine`` against the FAKE TensorRT of tests/fake_tensorrt.py: network and
builder flags per TensorRT version (10.3.0 and 11.4.1), precisions, DLA, the timing cache, parser errors, engine reuse
and the trtexec equivalent. Nothing here touches a GPU.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from engine_helpers import B1, B4, ORIN, install_fake, make_model_dir, one_line
from fake_tensorrt import FakeState

from provq.edge_runtime.engine_meta import (
    check_sidecar,
    read_sidecar,
    sidecar_path,
)
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import load_manifest, sha256_file, write_json_atomic
from provq.export.engine import build_engine, make_request, plan_build, trtexec_command


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
