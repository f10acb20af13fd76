"""``provq-export``: checkpoint -> ONNX model directory; ``check`` it for TensorRT; ``engine`` builds on the device.

Examples:
    provq-export default --out models/tiny                 # the shipped model -> encoder.onnx, decoder.onnx, manifest
    provq-export runs/photos/last.pt --out models/photos
    provq-export check models/tiny                         # TensorRT 10.3 parser and Q/DQ rules, FP32 and INT8 files
    provq-export engine models/tiny --precision int8       # on the Jetson: TensorRT engines (see --help there)

Formats:
    | format           | files                       | made by              | runs on                            |
    | ONNX FP32        | encoder.onnx, decoder.onnx  | provq-export         | ONNX Runtime anywhere, TensorRT    |
    | ONNX INT8 (Q/DQ) | *.int8.onnx                 | provq-calibrate      | ONNX Runtime CPU, TensorRT 10.3+   |
    | TensorRT engine  | engines/*.engine (+ .json)  | provq-export engine  | the device + TensorRT it was built |
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from provq.edge_runtime.console import command_frame, command_parser
from provq.edge_runtime.formats.errors import ProvqError

PROG = "provq-export"


def _export_main(argv: list[str]) -> int:
    p = command_parser(
        PROG, "Export a provq checkpoint to ONNX (encoder: frames -> int32 ids, decoder: ids -> frames).", __doc__
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a last.pt written by provq-train, or 'default'")
    p.add_argument("--out", required=True, type=Path, help="model directory to write (replaced if it is one)")
    p.add_argument("--json", type=Path, default=None, help="also write the manifest to this file")
    args = p.parse_args(argv)
    return command_frame(PROG, lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:
        raise ProvqError("exporting needs torch: pip install 'provq[train]'")
    from .onnx_export import export_model

    manifest = export_model(args.checkpoint, args.out)
    if args.json:
        args.json.write_text(json.dumps(manifest.data, indent=2) + "\n")
    parity = manifest.data["parity"]
    print(
        f"wrote {args.out}/encoder.onnx, decoder.onnx, manifest.json (opset {manifest.data['opset']}, "
        f"{manifest.codebook_size} codes, downsample {manifest.downsample}); ONNX Runtime vs PyTorch: "
        f"{parity['token_agreement']:.2%} ids equal, decoder max diff {parity['decoder_max_abs_diff']:.1e}"
    )
    print(
        f"wrote {args.out}/encoder.fp16.onnx, decoder.fp16.onnx (FP16 body, FP32 search); FP16 rounding vs FP32: "
        f"{parity['fp16']['token_agreement']:.2%} ids equal, decoder PSNR {parity['fp16']['decoder_psnr_db']:.1f} dB"
    )
    compute = manifest.gmac_per_megapixel
    print(f"compute: encoder {compute['encoder']:.1f}, decoder {compute['decoder']:.1f} GMAC per megapixel (ONNX)")
    if manifest.model_of_record == "int8":
        print(
            f"wrote {args.out}/encoder.int8.onnx, decoder.int8.onnx (Q/DQ, TensorRT) and the int8-cpu files with the "
            f"trained scales; ids equal to the model of record's (PyTorch): Q/DQ "
            f"{parity['int8']['token_agreement']:.2%}, int8-cpu {parity['int8-cpu']['token_agreement']:.2%}"
        )
        print(f"next: provq-export check {args.out}   (the INT8 model of record needs no provq-calibrate)")
    else:
        print(f"next: provq-calibrate {args.out} --data FRAMES --frames 300   (INT8 files for TensorRT and the CPU)")
    return 0


def _check_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{PROG} check",
        description="Check a model directory's ONNX files against TensorRT 10.3's parser and Q/DQ rules (no GPU).",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    args = p.parse_args(argv)
    return command_frame(f"{PROG} check", lambda: _check(args))


def _check(args: argparse.Namespace) -> int:
    from provq.edge_runtime.manifest import CPU_INT8, load_manifest

    from .trt_check import OLDEST_TENSORRT, check_model_dir

    findings = check_model_dir(args.model_dir)
    for finding in findings:
        print(finding)
    errors = sum(f.level == "error" for f in findings)
    if errors:
        print(f"{errors} error(s): TensorRT would refuse these files", file=sys.stderr)
        return 1
    print(f"ok: {args.model_dir} passes the TensorRT {OLDEST_TENSORRT}+ parser and Q/DQ checks")
    if load_manifest(args.model_dir).has(CPU_INT8):
        print(f"note: the {CPU_INT8} files are ONNX Runtime's CPU format; TensorRT never uses them (not checked)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "engine":
        from .engine_cli import engine_main

        return engine_main(argv[1:], prog=f"{PROG} engine")
    if argv and argv[0] == "check":
        return _check_main(argv[1:])
    return _export_main(argv)


if __name__ == "__main__":
    sys.exit(main())
