"""A quantization-aware model on held-out video: does the workstation's PyTorch model of record give the deployed
INT8 ids, and what do INT8, FP32 and the model before QAT cost in PSNR and token-stream bytes?

For one clip, runs ``provq-run`` (ONNX Runtime CPU, as a user would) on the first N frames with the QAT model
directory at ``--precision int8`` (its int8-cpu files) and ``fp32`` (the same weights without fake quantization),
and the model before QAT at ``fp32``; reads the ids back from the .ptok files; encodes the same frames
(``preprocess.prepare``, as provq-run does) with ``load_tokenizer(CHECKPOINT).encode`` in PyTorch and with the Q/DQ
encoder run twice: as written (``cpu_session(exact=True)``: float Convs on dequantized values) and fused by ONNX
Runtime into its integer kernels (exact int32 sums, as TensorRT's INT8 kernels compute them). Prints and writes
(``--json``):

    ids_equal            share of positions where two id sequences agree (PyTorch vs provq-run int8, PyTorch vs
                         Q/DQ as written, PyTorch vs Q/DQ fused, provq-run int8 vs fp32)
    psnr_db              provq-run's reconstruction PSNR against the input (its own figure, uint8 levels)
    bytes_per_frame      provq-run's token stream (previous-frame coded), mean bytes per frame

    python tools/qat_eval.py /work/eval/vtest.avi --model M --checkpoint runs/qat/last.pt --before PRE_QAT_DIR \\
        --frames 200 --out eval/vtest
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from provq.edge_runtime.backends import cpu_session
from provq.edge_runtime.manifest import load_manifest
from provq.edge_runtime.preprocess import prepare
from provq.edge_runtime.sources import open_source
from provq.edge_runtime.stable import load_codebook
from provq.edge_runtime.tokenstream.reader import TokenStreamReader
from provq.train.checkpoint import load_tokenizer

RUNS = {"int8": ("model", "int8"), "fp32": ("model", "fp32"), "before": ("before", "fp32")}


def _provq_run(args: argparse.Namespace, model: str, precision: str, name: str) -> dict:
    clip, frames, out = args.clip, args.frames, args.out
    tokens = out / f"{name}.ptok"
    command = [str(Path(sys.executable).with_name("provq-run")), str(clip), str(out / f"{name}.mkv"), "--model",
               model, "--precision", precision, "--tokens", str(tokens), "--json", str(out / f"{name}.json"),
               "--max-frames", str(frames), "--headless"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    reader = TokenStreamReader(tokens, codebook=load_codebook(load_manifest(model)))  # version 3 needs it
    try:
        ids = np.stack([frame.ids for frame in reader.frames()])
    finally:
        reader.close()
    return {"ids": ids, **json.loads((out / f"{name}.json").read_text())}


def _frames(clip: Path, count: int, downsample: int) -> list[np.ndarray]:
    """The clip's first ``count`` frames, prepared for the model, read by the runtime's own source (the decoder
    provq-run uses, so both sides see the same pixels)."""
    frames = []
    with open_source(str(clip)) as source:
        for frame in source:
            frames.append(prepare(frame.image, downsample)[0])
            if len(frames) == count:
                break
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("--model", required=True, help="the QAT model directory (provq-export of the QAT checkpoint)")
    p.add_argument("--checkpoint", required=True, help="the QAT checkpoint (or 'default')")
    p.add_argument("--before", required=True, help="the model directory before QAT")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, (which, precision) in RUNS.items():
        runs[name] = _provq_run(args, getattr(args, which), precision, name)
    manifest = load_manifest(args.model)
    model = load_tokenizer(args.checkpoint)
    qdq = {fused: cpu_session(manifest.path("int8", "encoder"), exact=not fused) for fused in (False, True)}
    torch_ids, qdq_ids = [], {False: [], True: []}
    with torch.no_grad():
        for x in _frames(args.clip, len(runs["int8"]["ids"]), manifest.downsample):
            torch_ids.append(model.encode(torch.from_numpy(x)).numpy()[0])
            for fused, session in qdq.items():
                qdq_ids[fused].append(session.run(None, {"images": x})[0][0])
    record = np.stack(torch_ids)
    report = {
        "clip": str(args.clip),
        "frames": len(record),
        "tokens": int(record.size),
        "ids_equal": {
            "pytorch_vs_provq_run_int8": float(np.mean(record == runs["int8"]["ids"])),
            "pytorch_vs_qdq": float(np.mean(record == np.stack(qdq_ids[False]))),
            "pytorch_vs_qdq_fused": float(np.mean(record == np.stack(qdq_ids[True]))),
            "provq_run_int8_vs_fp32": float(np.mean(runs["int8"]["ids"] == runs["fp32"]["ids"])),
        },
        "psnr_db": {name: run["psnr_db"] for name, run in runs.items()},
        "bytes_per_frame": {name: run["bytes_per_frame"] for name, run in runs.items()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
