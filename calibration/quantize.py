"""INT8 post-training quantization of one ONNX graph into explicit Q/DQ form that TensorRT 10.3-11.x accepts.

Only Conv nodes are quantized: per-channel symmetric INT8 weights (axis 0) and per-tensor symmetric INT8 inputs
(zero point 0), Q/DQ on the inputs of the quantized Convs, never on outputs; biases stay FP32. Everything else
stays FP32, in particular the nearest-code search (distance MatMul, ArgMin, codebook Gather) and the Convs named
in ``keep_fp32``.

Activation ranges come from ONNX Runtime's calibrators run here on the calibration frames:
    minmax      the largest magnitude seen
    entropy     TensorRT's method: the clipping threshold that minimises the KL divergence between the 2048-bin
                histogram and its 128-level quantized version (ONNX Runtime's quantize_static defaults to 128 bins,
                which makes it identical to minmax; we run the calibrator ourselves with 2048)
    percentile  the 99.999th percentile of magnitudes (2048 bins)
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from provq.edge_runtime.formats.graph import QUANTIZER_SCOPE

METHODS = {
    "minmax": (CalibrationMethod.MinMax, {}),
    "entropy": (CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 128}),
    "percentile": (CalibrationMethod.Percentile, {"num_bins": 2048, "percentile": 99.999}),
}
QUANTIZED_OPS = ["Conv"]
CHUNK = 4  # frames per calibration pass: ranges and histograms merge across passes, memory stays bounded


@dataclass(frozen=True)
class GraphCalibration:
    """One graph to quantize, whichever engine does it (``quantize_graph`` or ``quantize_graph_modelopt``)."""

    fp32_path: Path  # the FP32 ONNX file
    int8_path: Path  # the Q/DQ file to write
    input_name: str  # the graph's input
    inputs: list[np.ndarray]  # calibration batches for that input, each N x ... as the graph takes it
    method: str  # a key of METHODS
    keep_fp32: list[str]  # Conv node names left unquantized
    cpu_path: Path | None = None  # ONNX Runtime only: also write the operator-format file for CPUs here


class _Reader(CalibrationDataReader):
    """Feeds one input array at a time to ONNX Runtime's calibrator."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self.name = name
        self.arrays: Iterator[np.ndarray] = iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        array = next(self.arrays, None)
        return None if array is None else {self.name: array}


def _search_nodes(path: Path) -> list[str]:
    """Names of the nearest-code search / codebook lookup nodes (``/quantizer/...``), which stay FP32."""
    return [node.name for node in onnx.load(str(path)).graph.node if node.name.startswith(QUANTIZER_SCOPE)]


def quantize_graph(job: GraphCalibration) -> None:
    """Calibrate ``job.fp32_path`` on ``job.inputs`` and write the Q/DQ ``job.int8_path``.

    With ``job.cpu_path``, the same ranges also give ONNX Runtime's operator-format file for CPUs: QLinearConv and the
    other integer operators, uint8 activations, int8 per-channel weights, every operator quantized but the search
    and ``keep_fp32`` (TensorRT cannot build it; on a CPU it runs 1.6-1.8x as fast as FP32, where the Q/DQ file
    runs slower).
    """
    calibrate_method, options = METHODS[job.method]
    with tempfile.TemporaryDirectory(prefix="provq-calib-") as tmp:
        calibrator = create_calibrator(
            str(job.fp32_path),
            None if job.cpu_path else QUANTIZED_OPS,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibrate_method,
            providers=["CPUExecutionProvider"],
            extra_options={"symmetric": True, **options},
        )
        for start in range(0, len(job.inputs), CHUNK):  # the calibrators hold every activation of a chunk in memory
            calibrator.collect_data(_Reader(job.input_name, job.inputs[start : start + CHUNK]))
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibrator.compute_data(), ranges)
        del calibrator
        logging.getLogger("onnxruntime").setLevel(logging.WARNING)
        # Both files: the ranges computed above, per-channel int8 weights.
        common = dict(
            calibration_data_reader=None,
            calibration_cache_path=str(ranges),
            per_channel=True,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
        )
        quantize_static(
            str(job.fp32_path),
            str(job.int8_path),
            **common,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=job.keep_fp32,
            activation_type=QuantType.QInt8,
            # Biases stay FP32: TensorRT's explicit quantization takes int8 Q/DQ only (no int32 bias DQ).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
        if job.cpu_path is not None:
            quantize_static(
                str(job.fp32_path),
                str(job.cpu_path),
                **common,
                quant_format=QuantFormat.QOperator,
                nodes_to_exclude=[*_search_nodes(job.fp32_path), *job.keep_fp32],
                activation_type=QuantType.QUInt8,
                # 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, whose int16 sums
                # saturate at full 8-bit range (ONNX Runtime's quantization docs); reduce_range avoids that on every
                # CPU. Measured on a 2-core AVX2 CPU without VNNI: 8-bit weights kept 73% of the FP32 ids on unseen
                # photos, against about 90% on an AVX-512 VNNI CPU.
                reduce_range=True,
                extra_options={"WeightSymmetric": True},
            )
