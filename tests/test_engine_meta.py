"""Engine file names (the cache key), shape profiles, L4T and the engine sidecar: what makes a cached engine
stale and the rebuild command its error names. Runs without TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_helpers import B1, B4, ORIN, one_line

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
from provq.edge_runtime.manifest import load_manifest, write_json_atomic
from provq.export.engine import make_request


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
