"""Quantization-aware training (provq-train --qat) and its export: quantizer placement, trained scales in the ONNX
files, ONNX Runtime's INT8 ids against the PyTorch model of record on real photos, the checkpoint round trip and
bad input. A small Haar-stem model, three QAT steps on real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from test_stem_export import write_checkpoint

from provq.edge_runtime.backends import OnnxRuntimeBackend, cpu_session
from provq.edge_runtime.manifest import load_manifest
from provq.edge_runtime.preprocess import prepare
from provq.export.onnx_export import export_graphs, export_model, parity_frames
from provq.export.qat_graphs import cpu_graph
from provq.export.trt_check import check_model_dir
from provq.train import checkpoint, qat
from provq.train.cli import main as train_main
from provq.train.presets import ModelConfig
from provq.train.stems import HaarHead

HAAR = ModelConfig(widths=(16, 32), latent_channels=32, codebook_size=64, stem="haar", patch=4)
QUICK = ["--steps", "3", "--batch-size", "4", "--crop", "32", "--lr", "1e-4", "--eval-every", "3", "--val-frames",
         "4", "--workers", "0", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> dict[str, Path]:
    """A trained-looking checkpoint, its QAT fine-tune (3 steps on real photos) and the export of that."""
    folder = tmp_path_factory.mktemp("qat")
    base = write_checkpoint(HAAR, folder / "base.pt")
    args = ["--qat", "--resume", str(base), "--data", str(photo_dir), "--out", str(folder / "run"), *QUICK]
    assert train_main(args) == 0
    ckpt = folder / "run" / "last.pt"
    export_model(ckpt, folder / "model")
    return {"base": base, "ckpt": ckpt, "model": folder / "model", "folder": folder}


def _real_frames(unseen: Path) -> list[np.ndarray]:
    import cv2

    frames = [prepare(cv2.imread(str(p)), 8)[0] for p in sorted(unseen.glob("*.png"))]
    return frames + parity_frames(8)


def test_quantizers_sit_on_every_conv_but_the_fp32_ones(qat_run: dict[str, Path]) -> None:
    model = checkpoint.load_tokenizer(qat_run["ckpt"])
    quantized = qat.quantized_modules(model)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    head = next(n for n, m in model.named_modules() if isinstance(m, HaarHead))
    kept = {"encoder.layers.1", "quant_proj", "post_quant_proj", f"{head}.conv"}  # Haar band reader, projections, head
    assert set(quantized) == convs - kept and len(quantized) >= 8
    assert set(checkpoint.load(qat_run["ckpt"])[qat.KEY]["kept_fp32"]) == kept | {"encoder.layers.0"}  # + analysis
    for name, module in model.named_modules():
        for role in ("input_quantizer", "weight_quantizer", "output_quantizer"):
            q = getattr(module, role, None)
            if q is None:
                continue
            assert q.is_enabled == (name in quantized), (name, role)
            if q.is_enabled:  # the deployed INT8: 8 bits, [-128, 127], per channel (weights) / per tensor (the rest)
                bits = qat.WEIGHT_BITS if role == "weight_quantizer" else 8  # 7: exact in ONNX Runtime's u8 x s8
                assert (q.num_bits, q.unsigned, q.narrow_range) == (bits, False, False)
                assert q.axis == (0 if role == "weight_quantizer" else None)
    plain = checkpoint.load_tokenizer(qat_run["ckpt"], fake_quant=False)
    assert not any("quantizer" in type(m).__name__.lower() for m in plain.encoder.modules())


def test_exported_scales_are_the_trained_amax_over_127(qat_run: dict[str, Path]) -> None:
    model = checkpoint.load_tokenizer(qat_run["ckpt"])
    manifest = load_manifest(qat_run["model"])
    assert manifest.model_of_record == "int8" and manifest.data["int8"]["method"] == "qat"
    inits = {}
    for part in ("encoder", "decoder"):
        graph = onnx.load(str(manifest.path("int8", part))).graph
        inits |= {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.name.startswith("/quantizer/"):
                assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")
    cpu_inits = {}
    for part in ("encoder", "decoder"):
        cpu_inits |= {
            i.name: numpy_helper.to_array(i) for i in onnx.load(str(manifest.path("int8-cpu", part))).graph.initializer
        }
    for name, amax in qat.quantized_modules(model).items():
        assert inits[f"{name}.input_scale"] == np.float32(amax["input"] / 127)
        assert inits[f"{name}.output_scale"] == cpu_inits[f"{name}.output_scale"] == np.float32(amax["output"] / 127)
        bias = model.get_submodule(name).bias.detach().numpy()  # on the int32 grid the integer convolution adds
        grid = np.float32(amax["input"] / 127) * (amax["weight"] / 63).numpy()
        np.testing.assert_array_equal(
            (cpu_inits[f"{name}.bias_int32"] * grid.astype(np.float64)).astype(np.float32), bias
        )
        np.testing.assert_array_equal(inits[f"{name}.weight_scale"], (amax["weight"] / 63).numpy())
        w = model.get_submodule(name).weight.detach()
        codes = torch.clamp((w * (63 / amax["weight"]).reshape(-1, 1, 1, 1)).round(), -64, 63)
        np.testing.assert_array_equal(inits[f"{name}.weight_quantized"], codes.numpy().astype(np.int8))
        assert f"{name}.weight" not in inits  # the float weight is gone: only the trained integers remain
    assert [str(f) for f in check_model_dir(qat_run["model"])] == []  # TensorRT's parser and Q/DQ rules


def test_onnx_runtime_int8_gives_the_pytorch_model_of_records_ids(qat_run: dict[str, Path], unseen_photo_dir: Path):
    model = checkpoint.load_tokenizer(qat_run["ckpt"])
    manifest = load_manifest(qat_run["model"])
    qdq = cpu_session(manifest.path("int8", "encoder"), exact=True)
    cpu = OnnxRuntimeBackend(manifest, "int8", providers=["CPUExecutionProvider"])
    assert cpu.file_sets == {"encoder": "int8-cpu", "decoder": "int8-cpu"}
    ops = {n.op_type for n in onnx.load(str(manifest.path("int8-cpu", "encoder"))).graph.node}
    assert "QLinearConv" in ops and "ConvInteger" not in ops  # ONNX Runtime's requantizing integer convolution
    same = {"qdq": 0, "cpu": 0, "fp32": 0}
    total = 0
    fp32 = cpu_session(manifest.path("fp32", "encoder"))
    for x in _real_frames(unseen_photo_dir):
        with torch.no_grad():
            ids = model.encode(torch.from_numpy(x)).numpy()
            recon = model.decode(torch.from_numpy(ids)).numpy()
        total += ids.size
        same["qdq"] += int((qdq.run(None, {"images": x})[0] == ids).sum())
        same["cpu"] += int((cpu.encode(x) == ids).sum())
        same["fp32"] += int((fp32.run(None, {"images": x})[0] == ids).sum())
        assert np.abs(cpu.decode(ids) - recon).max() < 1e-3  # the CPU decoder computes the same integers
    assert total > 2000
    assert same["qdq"] / total >= 0.99 and same["cpu"] / total >= 0.99, same
    assert same["fp32"] < same["qdq"]  # the FP32 network is not the model of record
    parity = manifest.data["parity"]
    assert parity["int8"]["token_agreement"] >= 0.98 and parity["int8-cpu"]["token_agreement"] >= 0.98


def test_the_qat_state_survives_the_checkpoint_and_a_resume(qat_run: dict[str, Path], photo_dir: Path) -> None:
    state = checkpoint.load(qat_run["ckpt"])
    model = checkpoint.load_tokenizer(qat_run["ckpt"])
    saved = {k: v for k, v in state["model"].items() if k.endswith("._amax")}
    restored = {k: v for k, v in model.state_dict().items() if k.endswith("._amax")}
    assert saved.keys() == restored.keys() and len(saved) == 3 * len(state[qat.KEY]["quantized"])
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    assert state["step"] == 3 and state["schedule"]["kind"] == "hard"
    out = qat_run["folder"] / "resumed"
    shutil.copytree(qat_run["ckpt"].parent, out)
    args = ["--resume", str(out / "last.pt"), "--data", str(photo_dir), "--out", str(out), *QUICK]
    args[args.index("--steps") + 1] = "4"
    assert train_main(args) == 0  # continues the QAT run: same quantizers, no recalibration
    again = checkpoint.load(out / "last.pt")
    assert again["step"] == 4 and again[qat.KEY]["calibration"] == state[qat.KEY]["calibration"]
    inputs = [k for k in saved if "input_quantizer" in k]
    assert all(torch.equal(again["model"][k], saved[k]) for k in inputs)  # activation ranges stay as calibrated


def test_inputs_and_weights_only_export_the_int32_sums(qat_run: dict[str, Path], unseen_photo_dir: Path) -> None:
    """A QAT model without output quantizers (version 1 checkpoints): the CPU graph keeps ConvInteger's exact int32
    sums and adds the float bias after them, as that network does."""
    import modelopt.torch.quantization as mtq

    model = checkpoint.load_tokenizer(qat_run["base"])
    cfg = qat.quant_config(qat.kept_fp32(model))
    cfg["quant_cfg"] = [e for e in cfg["quant_cfg"] if e["quantizer_name"] != "*output_quantizer"]
    frames = [torch.from_numpy(x) for x in _real_frames(unseen_photo_dir)]
    with torch.no_grad():
        mtq.quantize(model, cfg, forward_loop=lambda m: [m.decode(m.encode(x)) for x in frames[:2]])
        expected = [model.encode(x).numpy() for x in frames]
    layers = qat.int8_layers(model)
    assert layers and not any("output_scale" in layer for layer in layers.values())
    plain = checkpoint.load_tokenizer(qat_run["base"])
    (qat_run["folder"] / "v1").mkdir()
    encoder, _ = export_graphs(plain, qat_run["folder"] / "v1")
    fp32 = onnx.load(str(encoder))
    names = {i.name for i in fp32.graph.initializer}
    graph = cpu_graph(fp32, {k: v for k, v in layers.items() if f"{k}.weight" in names})
    assert "ConvInteger" in {n.op_type for n in graph.graph.node}
    session = cpu_session(graph.SerializeToString())
    same = sum(
        int((session.run(None, {"images": x.numpy()})[0] == ids).sum()) for x, ids in zip(frames, expected, strict=True)
    )
    assert same / sum(ids.size for ids in expected) >= 0.99


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)


def test_qat_needs_a_trained_checkpoint(
    qat_run: dict[str, Path], photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    untrained = checkpoint.load(qat_run["base"])
    untrained["model"]["quantizer.initialized"] = torch.tensor(False)
    checkpoint.save_atomic(untrained, tmp_path / "untrained.pt")
    for resume in ([], ["--resume", str(tmp_path / "untrained.pt")]):
        code = train_main(["--qat", *resume, "--data", str(photo_dir), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("provq-train: error: --qat fine-tunes a trained model: pass --resume"), err
        assert not (tmp_path / "o").exists()


def test_calibrating_a_qat_model_is_refused_and_changes_nothing(qat_run: dict[str, Path]) -> None:
    before = {p.name: p.read_bytes() for p in qat_run["model"].iterdir() if p.is_file()}
    done = _cli("-m", "provq.calibration.cli", str(qat_run["model"]), "--data", "sample://", "--frames", "64")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "quantization-aware model" in done.stderr.strip().splitlines()[-1]
    assert {p.name: p.read_bytes() for p in qat_run["model"].iterdir() if p.is_file()} == before
    assert json.loads(before["manifest.json"])["model_of_record"] == "int8"
