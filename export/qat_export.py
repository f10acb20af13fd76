"""A quantization-aware checkpoint's INT8 files and what they compute, written by ``provq-export``.

``write_int8`` turns the fake-quantized model of record (``provq.train.checkpoint.load_tokenizer``) into
``encoder.int8.onnx`` / ``decoder.int8.onnx`` (Q/DQ, TensorRT) and the ``int8-cpu`` pair (QLinearConv, or
ConvInteger for version 1 QAT states; ONNX Runtime CPU) with the trained scales (``qat_graphs``), then checks both
against PyTorch on real frames (the shipped sample photos, ``onnx_export.parity_frames``). Figures (images in
[-1, 1], PSNR with peak-to-peak 2, mean over frames):

    parity[file set]   token_agreement: share of ONNX Runtime's ids equal to the PyTorch model of record's;
                       decoder_psnr_db: ONNX Runtime's decoder against PyTorch's on the same ids
    int8               token_agreement: share of the FP32 files' ids equal to the model of record's; psnr_db and
                       fp32_psnr_db: round trips of both against the input; psnr_drop_db = fp32_psnr_db - psnr_db

The Q/DQ files run with ONNX Runtime's graph optimizations off (``cpu_session(exact=True)``: as written, TensorRT's
arithmetic); the int8-cpu files as the runtime runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from provq.edge_runtime.backends import cpu_session
from provq.edge_runtime.formats.errors import ProvqError
from provq.edge_runtime.formats.graph import IDS, IMAGES
from provq.edge_runtime.formats.manifest import CPU_INT8, PARTS
from provq.edge_runtime.quality import psnr
from provq.train import qat
from provq.train.model import Tokenizer

from .qat_graphs import cpu_graph, qdq_graph

MIN_PARITY = 0.98  # ONNX Runtime's INT8 ids equal to PyTorch's fake-quantized ones on fewer positions: refused
FILE_SETS = {"int8": qdq_graph, CPU_INT8: cpu_graph}


def _split(layers: dict[str, Any], graphs: dict[str, onnx.ModelProto]) -> dict[str, dict[str, Any]]:
    """Each fake-quantized module goes to the graph holding its ``<module>.weight`` initializer."""
    names = {part: {init.name for init in graph.graph.initializer} for part, graph in graphs.items()}
    split = {part: {k: v for k, v in layers.items() if f"{k}.weight" in names[part]} for part in PARTS}
    missing = set(layers) - set(split["encoder"]) - set(split["decoder"])
    if missing:
        raise ProvqError(f"fake-quantized modules {sorted(missing)} are in neither exported graph: re-export")
    return split


def write_int8(model: Tokenizer, fp32: dict[str, Path], directory: Path) -> dict[str, dict[str, str]]:
    """DIRECTORY/{encoder,decoder}.int8.onnx and .int8-cpu.onnx from the fake-quantized ``model`` and the FP32
    graphs ``fp32`` ({part: path}) of the same weights; returns {file set: {part: file name}}."""
    graphs = {part: onnx.load(str(path)) for part, path in fp32.items()}
    layers = _split(qat.int8_layers(model), graphs)
    files: dict[str, dict[str, str]] = {}
    for file_set, build in FILE_SETS.items():
        files[file_set] = {}
        for part in PARTS:
            name = f"{part}.{file_set}.onnx"
            onnx.save(build(graphs[part], layers[part]), str(directory / name))
            files[file_set][part] = name
    return files


def check_int8(model: Tokenizer, directory: Path, files: dict[str, dict[str, str]], frames: list[np.ndarray]) -> dict:
    """The figures of the module docstring on ``frames`` (each 1 x 3 x H x W or N x 3 x H x W in [-1, 1]);
    refuses files whose ids differ from the model of record's at more than 1 - MIN_PARITY of positions."""
    fp32 = {part: cpu_session(directory / files["fp32"][part]) for part in PARTS}
    figures: dict[str, Any] = {}
    records = []
    with torch.no_grad():
        for x in frames:
            ids = model.encode(torch.from_numpy(x)).numpy()
            records.append((x, ids, model.decode(torch.from_numpy(ids)).numpy()))
    for file_set in FILE_SETS:
        exact = file_set == "int8"
        enc, dec = (cpu_session(directory / files[file_set][part], exact=exact) for part in PARTS)
        same = total = 0
        decoder = []
        for x, ids, recon in records:
            same += int((enc.run(None, {IMAGES: x})[0] == ids).sum())
            total += ids.size
            decoder.append(psnr(dec.run(None, {IDS: ids})[0], recon, peak=2.0))
        agreement = same / total
        if agreement < MIN_PARITY:
            raise ProvqError(
                f"the {file_set} files give the model of record's ids at only {agreement:.2%} of positions: the "
                "INT8 export is broken; report it with the checkpoint"
            )
        figures[file_set] = {"tokens": total, "token_agreement": agreement, "decoder_psnr_db": float(np.mean(decoder)),
                             "runtime": "onnxruntime CPUExecutionProvider" + (", graph optimizations off" if exact
                                                                                else "")}  # fmt: skip
    same = 0
    rows: dict[str, list[float]] = {"psnr_db": [], "fp32_psnr_db": []}
    for x, ids, recon in records:
        ids32 = fp32["encoder"].run(None, {IMAGES: x})[0]
        same += int((ids32 == ids).sum())
        rows["psnr_db"].append(psnr(recon, x, peak=2.0))
        rows["fp32_psnr_db"].append(psnr(fp32["decoder"].run(None, {IDS: ids32})[0], x, peak=2.0))
    total = sum(ids.size for _, ids, _ in records)
    vs = {"token_agreement": same / total, **{k: float(np.mean(v)) for k, v in rows.items()}}
    vs["psnr_drop_db"] = vs["fp32_psnr_db"] - vs["psnr_db"]
    return {"parity": figures, "fp32_vs_record": vs}
