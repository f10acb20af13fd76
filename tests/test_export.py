"""provq-export: ONNX files of the default model, their parity with PyTorch, the TensorRT check, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from provq.calibration.report import session
from provq.edge_runtime.manifest import load_manifest
from provq.edge_runtime.preprocess import prepare
from provq.export.cli import main as export_main
from provq.export.fp16_graph import convert_to_fp16, rounding_emulation
from provq.export.trt_check import check_model_file
from provq.train.checkpoint import load_tokenizer


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "provq.export.cli", *args], capture_output=True, text=True, check=False
    )


def test_manifest_describes_the_export(exported: Path) -> None:
    manifest = load_manifest(exported)
    data = manifest.data
    assert data["opset"] == 17 and data["downsample"] == 8 and data["codebook_size"] == 1024 and data["code_dim"] == 8
    assert data["input"] == {"name": "images", "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                             "range": [-1.0, 1.0]}  # fmt: skip
    assert data["parity"]["token_agreement"] >= 0.999 and data["parity"]["decoder_max_abs_diff"] < 1e-3
    tok = load_tokenizer("default", fake_quant=False)  # the FP32 network the fixture exported
    codebook = tok.quantizer.codebook.detach().numpy().astype("<f4")
    import hashlib

    assert data["codebook_sha256"] == hashlib.sha256(codebook.tobytes()).hexdigest()
    for part in ("encoder", "decoder"):
        manifest.verify(manifest.path("fp32", part))  # sha256 recorded and matching
    assert oct(exported.stat().st_mode & 0o777) != oct(0o700)  # an ordinary folder, not mkdtemp's private one


def test_onnx_runtime_ids_match_pytorch_on_unseen_photos(exported: Path, unseen_photo_dir: Path) -> None:
    tok = load_tokenizer("default", fake_quant=False)  # the FP32 network the fixture exported
    encoder = _session(exported / "encoder.onnx")
    decoder = _session(exported / "decoder.onnx")
    same = total = 0
    for path in sorted(unseen_photo_dir.glob("*.png")):
        x, _ = prepare(cv2.imread(str(path)), 8)  # odd sizes are padded to multiples of 8: dynamic H and W
        ids = encoder.run(None, {"images": x})[0]
        with torch.no_grad():
            expected = tok.encode(torch.from_numpy(x)).numpy()
            recon = tok.decode(torch.from_numpy(ids)).numpy()
        assert ids.dtype == np.int32 and ids.shape == expected.shape == (1, x.shape[2] // 8, x.shape[3] // 8)
        same += int((ids == expected).sum())
        total += ids.size
        np.testing.assert_allclose(decoder.run(None, {"ids": ids})[0], recon, atol=1e-4)
    assert total >= 800 and same / total >= 0.999


def test_batch_and_size_are_dynamic(exported: Path) -> None:
    encoder = _session(exported / "encoder.onnx")
    decoder = _session(exported / "decoder.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 40, 64)).astype(np.float32)
    ids = encoder.run(None, {"images": x})[0]
    assert ids.shape == (3, 5, 8) and ids.min() >= 0 and ids.max() < 1024
    assert np.array_equal(ids[1:2], encoder.run(None, {"images": x[1:2]})[0])  # batching changes nothing
    out = decoder.run(None, {"ids": ids})[0]
    assert out.shape == (3, 3, 40, 64) and out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1


def test_check_passes_the_export_and_flags_the_quantizer_without_qdq(exported: Path, capsys) -> None:
    assert export_main(["check", str(exported)]) == 0
    assert "ok:" in capsys.readouterr().out
    graph = onnx.load(str(exported / "encoder.onnx")).graph
    quantizer_ops = {n.op_type for n in graph.node if n.name.startswith("/quantizer/")}
    assert {"MatMul", "ArgMin"} <= quantizer_ops
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _input_types(graph: onnx.GraphProto) -> dict[str, set[int]]:
    """{node name: element types of its non-constant and constant inputs}, read from a typed (inferred) graph."""
    inferred = onnx.shape_inference.infer_shapes(
        onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.value_info]}
    types |= {t.name: t.data_type for t in graph.initializer}
    return {n.name: {types[i] for i in n.input if i in types} for n in graph.node}


def test_fp16_files_keep_the_search_fp32_and_keep_the_ids(exported: Path, unseen_photo_dir: Path) -> None:
    manifest = load_manifest(exported)
    assert manifest.precisions == ["fp32", "fp16"]
    for part in ("encoder", "decoder"):
        manifest.verify(manifest.path("fp16", part))
    parity = manifest.data["parity"]["fp16"]
    assert parity["token_agreement"] >= 0.99 and 60 < parity["decoder_psnr_db"] < 100
    encoder = onnx.load(str(exported / "encoder.fp16.onnx")).graph
    inputs = _input_types(encoder)
    search = [name for name in inputs if name.startswith(("/quantizer/", "/quant_proj/"))]
    assert len(search) >= 8 and all(TensorProto.FLOAT16 not in inputs[name] for name in search)
    body = [n.name for n in encoder.node if n.op_type == "Conv" and n.name.startswith("/encoder/")]
    # the shipped tiny model's encoder: the Haar analysis and 9 learned Convs
    assert len(body) == 10 and all(inputs[name] == {TensorProto.FLOAT16} for name in body)
    assert [(v.name, v.type.tensor_type.elem_type) for v in (*encoder.input, *encoder.output)] == [
        ("images", TensorProto.FLOAT), ("ids", TensorProto.INT32)]  # fmt: skip
    decoder = onnx.load(str(exported / "decoder.fp16.onnx")).graph
    assert decoder.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # FP16 rounding of every tensor, on real photos the model never trained on: the ids stay FP32's
    enc32, dec32 = session(exported / "encoder.onnx"), session(exported / "decoder.onnx")
    enc16, dec16 = session(rounding_emulation(exported / "encoder.fp16.onnx")), session(exported / "decoder.fp16.onnx")
    same = total = 0
    for path in sorted(unseen_photo_dir.glob("*.png")):
        x, _ = prepare(cv2.imread(str(path)), 8)
        ids = enc32.run(None, {"images": x})[0]
        same += int((enc16.run(None, {"images": x})[0] == ids).sum())
        total += ids.size
        np.testing.assert_allclose(dec16.run(None, {"ids": ids})[0], dec32.run(None, {"ids": ids})[0], atol=0.02)
    assert total >= 800 and same / total >= 0.99


def test_rounding_emulation_rounds_every_fp16_tensor(tmp_path: Path) -> None:
    """y = (x * 3) + 1 in FP16: the emulation must round x, x * 3 and the sum, exactly as float16 arithmetic does."""
    nodes = [helper.make_node("Mul", ["x", "three"], ["m"], name="/body/Mul"),
             helper.make_node("Add", ["m", "one"], ["y"], name="/body/Add")]  # fmt: skip
    inits = [
        helper.make_tensor("three", TensorProto.FLOAT, [], [3.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    src = _tiny_model(tmp_path, nodes, inits)
    convert_to_fp16(src, tmp_path / "half.onnx")
    x = np.random.default_rng(0).uniform(-10, 10, (1, 4)).astype(np.float32)
    half = x.astype(np.float16)
    expected = ((half * np.float16(3)) + np.float16(1)).astype(np.float32)  # numpy rounds each float16 result
    emulated = session(rounding_emulation(tmp_path / "half.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(emulated, expected)
    assert not np.array_equal(emulated, x * 3 + 1)
    assert session(tmp_path / "half.onnx").run(None, {"x": x})[0].dtype == np.float32  # inputs/outputs stay FP32


def _tiny_model(tmp_path: Path, nodes: list, inits: list, opset: int = 17, name: str = "m.onnx") -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits,
    )  # fmt: skip
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_check_reports_qdq_rule_breaks(tmp_path: Path) -> None:
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero_u8 = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="/encoder/q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="/encoder/dq"),
        helper.make_node("Relu", ["d"], ["y"], name="/quantizer/relu"),
    ]
    findings = [str(f) for f in check_model_file(_tiny_model(tmp_path, nodes, [scale, zero_u8]))]
    assert any("zero point must be 0" in f for f in findings)
    assert any("quantizer must stay FP32" in f or "must stay FP32" in f for f in findings)


def test_check_reports_opset_and_unknown_operators(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    assert not check_model_file(_tiny_model(tmp_path, nodes, []))
    findings = [str(f) for f in check_model_file(_tiny_model(tmp_path, nodes, [], opset=22, name="new.onnx"))]
    assert any("opset 22" in f for f in findings)
    nodes = [helper.make_node("Hardmax", ["x"], ["y"], name="h")]
    findings = [str(f) for f in check_model_file(_tiny_model(tmp_path, nodes, [], name="hm.onnx"))]
    assert any("Hardmax is not in TensorRT 10.3" in f for f in findings)
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"not onnx")
    assert "not a valid ONNX model" in str(check_model_file(bad)[0])


def test_check_refuses_a_tampered_file(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in exported.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    data = (copy / "decoder.onnx").read_bytes()
    (copy / "decoder.onnx").write_bytes(data[:-10] + bytes(10))
    done = run_cli("check", str(copy))
    assert done.returncode == 1 and "does not match its manifest" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pt", "--out", "{tmp}/m"], "does not exist"),
        (["{tmp}/corrupt.pt", "--out", "{tmp}/m"], "not a readable checkpoint"),
        (["default", "--out", "{tmp}/afile"], "is a file"),
        (["default", "--out", "{tmp}/other"], "not a provq model"),
        (["check", "{tmp}/nowhere"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    done = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "m").exists()


def test_failed_export_leaves_the_previous_model_directory(exported: Path, tmp_path: Path) -> None:
    before = json.loads((exported / "manifest.json").read_text())
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    done = run_cli(str(tmp_path / "corrupt.pt"), "--out", str(exported))
    assert done.returncode == 2
    assert json.loads((exported / "manifest.json").read_text()) == before
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(f".{exported.name}.")]
