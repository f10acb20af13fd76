"""The optional ``--engine modelopt`` path: NVIDIA ModelOpt's ONNX INT8 quantizer in place of ONNX Runtime's.

Same contract as ``quantize.quantize_graph``: Conv inputs and weights INT8 with Q/DQ, the nearest-code search and
the ``keep_fp32`` Convs excluded, everything else FP32 (``high_precision_dtype="fp32"``: no FP16 casts, so the
file also runs on ONNX Runtime CPU). Calibration runs on the CPU execution provider. ModelOpt offers ``max`` and
``entropy`` ranges; ``minmax`` maps to ``max`` and ``percentile`` is refused.

Install it without its ``[onnx]`` extra, which replaces onnxruntime with a GPU build: ``pip install nvidia-modelopt``.
"""

from __future__ import annotations

import re

import numpy as np

from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.formats.graph import QUANTIZER_SCOPE

from .quantize import QUANTIZED_OPS, GraphCalibration

MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy"}


def quantize_graph_modelopt(job: GraphCalibration) -> None:
    """Calibrate ``job.fp32_path`` on ``job.inputs`` (same-shape batches) with ModelOpt and write the Q/DQ
    ``job.int8_path`` (``job.cpu_path`` does not apply: ModelOpt writes no operator-format file)."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise EdgeError(
            "nvidia-modelopt is not installed: pip install nvidia-modelopt (not its [onnx] extra), or use --engine ort"
        ) from None
    if job.method not in MODELOPT_METHODS:
        raise EdgeError(f"--engine modelopt supports --method {' or '.join(MODELOPT_METHODS)}, not {job.method}")
    quantize(
        onnx_path=str(job.fp32_path),
        quantize_mode="int8",
        calibration_data={job.input_name: np.concatenate(job.inputs)},
        calibration_method=MODELOPT_METHODS[job.method],
        calibration_eps=["cpu"],
        op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_exclude=[re.escape(QUANTIZER_SCOPE) + ".*", *(re.escape(name) for name in job.keep_fp32)],
        high_precision_dtype="fp32",
        output_path=str(job.int8_path),
    )
