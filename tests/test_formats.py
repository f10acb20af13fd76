"""The shared contracts in provq.edge_runtime.formats: one preprocessing for training and runtime, the manifest's
schema (manifests written before still load and round-trip unchanged), atomic writing, graph names, file types."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.formats import errors, files, pixels
from provq.edge_runtime.formats.files import atomic_path, staged_directory, write_bytes_atomic
from provq.edge_runtime.formats.graph import IDS, IMAGES, QUANTIZER_SCOPE
from provq.edge_runtime.formats.manifest import NAME, read_manifest, write_manifest
from provq.edge_runtime.formats.media import IMAGE_EXTENSIONS
from provq.edge_runtime.manifest import default_model_dir
from provq.edge_runtime.preprocess import prepare, to_bgr_uint8
from provq.edge_runtime.source_uri import parse_source_uri
from provq.train import data
from provq.train.errors import ProvqError
from provq.train.file_index import index_source

SAMPLE_PHOTO = default_model_dir().parent / "sample" / "images" / "astronaut.jpg"


def test_training_and_runtime_see_the_same_input_on_all_256_levels() -> None:
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.stack([levels, levels[::-1], np.roll(levels, 85)], axis=-1).reshape(16, 16, 3)  # every level, each channel
    trained_on = data.to_tensor(rgb[None]).numpy()
    deployed_on, _ = prepare(np.ascontiguousarray(rgb[..., ::-1]), downsample=8)  # the runtime gets BGR frames
    assert trained_on.dtype == deployed_on.dtype == np.float32
    np.testing.assert_array_equal(trained_on, deployed_on)  # bit for bit, not approximately
    values = pixels.levels_to_model(levels)
    assert values[0] == -1.0 and values[255] == 1.0 and np.all(np.diff(values) > 0)
    np.testing.assert_allclose(values, levels / 127.5 - 1.0, rtol=0, atol=2 * np.finfo(np.float32).eps)  # 2 steps
    np.testing.assert_array_equal(pixels.model_to_levels(values), levels)  # the inverse is exact on every level


def test_16_bit_frames_become_the_nearest_8_bit_level_in_training_and_runtime(tmp_path: Path) -> None:
    photo = cv2.imread(str(SAMPLE_PHOTO))[:256, :256]
    wide = photo.astype(np.uint16) * 257 + np.arange(256, dtype=np.uint16)[None, :, None]  # a real photo, 16 bit
    wide[:, :, 0] = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # and every 16-bit level once
    path = tmp_path / "wide.png"
    assert cv2.imwrite(str(path), wide)
    trained = data.read_image(path)
    deployed = to_bgr_uint8(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    np.testing.assert_array_equal(trained, deployed[..., ::-1])
    assert np.abs(deployed.astype(np.float64) - wide / 257.0).max() <= 0.5  # the nearest level
    np.testing.assert_array_equal(data.to_tensor(trained[None]).numpy(), prepare(deployed, downsample=8)[0])


def test_one_error_base() -> None:
    assert ProvqError is errors.ProvqError and issubclass(EdgeError, ProvqError)


def test_the_shipped_manifest_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    shipped = default_model_dir() / NAME
    fields = read_manifest(default_model_dir())
    write_manifest(tmp_path, fields)
    assert (tmp_path / NAME).read_bytes() == shipped.read_bytes()
    assert fields.downsample == 8 and fields.files["fp32"] == {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}


def test_older_manifests_and_unknown_fields_load(tmp_path: Path) -> None:
    data_ = json.loads((default_model_dir() / NAME).read_text())
    for key in ("gmac_per_megapixel", "int8", "parity", "exported_with", "model_of_record"):  # added over time
        del data_[key]
    del data_["files"]["fp16"], data_["files"]["int8"], data_["files"]["int8-cpu"]
    data_["recorded_later"] = {"kept": True}
    (tmp_path / NAME).write_text(json.dumps(data_))
    fields = read_manifest(tmp_path)
    assert fields.gmac_per_megapixel is None and fields.int8 is None and list(fields.files) == ["fp32"]
    assert fields.model_of_record is None and fields.to_json() == data_


def test_the_writer_refuses_what_the_reader_would_refuse(tmp_path: Path) -> None:
    fields = read_manifest(default_model_dir())
    (tmp_path / NAME).write_text("previous")
    with pytest.raises(EdgeError, match="no fp32 files"):
        write_manifest(tmp_path, replace(fields, files={"fp16": fields.files["fp16"]}))
    with pytest.raises(EdgeError, match="model_of_record 'int8' names no file set"):
        write_manifest(tmp_path, replace(fields, files={"fp32": fields.files["fp32"]}))  # the shipped record is int8
    with pytest.raises(EdgeError, match="not a plain name"):
        write_manifest(tmp_path, replace(fields, files={"fp32": {"encoder": "../e.onnx", "decoder": "d.onnx"}}))
    assert (tmp_path / NAME).read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == [NAME]


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    write_bytes_atomic(path, b"old")
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_staged_directory_replaces_the_old_one_only_when_complete(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_bytes(b"old")
    synced = []
    monkeypatch.setattr(files, "_fsync_path", lambda path, *flags: synced.append(Path(path)))
    with staged_directory(out) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "new.bin").write_bytes(b"new")
        (staging / "top.txt").write_bytes(b"top")
        assert staging.parent == tmp_path and staging.name.startswith(".model.")
        assert _tree(out) == {"old.txt": b"old"}  # the old directory is whole until the new one is complete
    assert _tree(out) == {"sub/new.bin": b"new", "top.txt": b"top"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder, no .model.old
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # an ordinary folder, not mkdtemp's private one
    names = [p.name for p in synced]
    assert {"new.bin", "top.txt", "sub"} <= set(names) and synced[-1] == tmp_path  # files, folders, the parent
    assert names.index("new.bin") < names.index("sub")  # a folder after what it holds


def test_a_failed_staged_directory_leaves_the_old_one(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), staged_directory(out) as staging:
        (staging / "half.bin").write_bytes(b"half")
        raise OSError("disk full")
    assert _tree(out) == {"old.txt": b"old"} and [p.name for p in tmp_path.iterdir()] == ["model"]
    rename = Path.rename

    def failing_swap(self: Path, target: Path) -> Path:  # the old directory moved aside, the new one fails to move in
        if self.name.startswith(".model.") and self.name != ".model.old":
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_swap)
    with pytest.raises(OSError, match="rename failed"), staged_directory(out) as staging:
        (staging / "new.bin").write_bytes(b"new")
    assert _tree(out) == {"old.txt": b"old"} and [p.name for p in tmp_path.iterdir()] == ["model"]
    with staged_directory(tmp_path / "a" / "fresh") as staging:  # no old directory, parents made
        (staging / "x").write_bytes(b"x")
    assert _tree(tmp_path / "a") == {"fresh/x": b"x"}


def test_the_shipped_graphs_use_the_shared_names() -> None:
    encoder = onnx.load(str(default_model_dir() / "encoder.onnx"))
    decoder = onnx.load(str(default_model_dir() / "decoder.onnx"))
    assert [i.name for i in encoder.graph.input] == [IMAGES] and [o.name for o in encoder.graph.output] == [IDS]
    assert [i.name for i in decoder.graph.input] == [IDS] and [o.name for o in decoder.graph.output] == [IMAGES]
    search = {n.op_type for n in encoder.graph.node if n.name.startswith(QUANTIZER_SCOPE)}
    assert "ArgMin" in search


def test_training_and_runtime_read_the_same_image_types(tmp_path: Path) -> None:
    photo = cv2.resize(cv2.imread(str(SAMPLE_PHOTO)), (64, 64), interpolation=cv2.INTER_AREA)
    folder = tmp_path / "photos"
    folder.mkdir()
    for ext in IMAGE_EXTENSIONS:
        assert cv2.imwrite(str(folder / f"photo{ext}"), photo), ext
    (folder / "notes.txt").write_text("not an image")
    runtime = {p.name for p in parse_source_uri(str(folder)).images}
    index = index_source(str(folder), cache_dir=tmp_path / "cache")
    training = {Path(index.path(i)).name for i in range(len(index))}
    assert runtime == training == {f"photo{ext}" for ext in IMAGE_EXTENSIONS}
