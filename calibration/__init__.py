"""provq.calibration: INT8 post-training quantization of the exported ONNX files (quantizer kept in FP32).

frames     representative and held-out frames from any runtime source, prepared by the runtime's preprocessing
quantize   ONNX Runtime calibration (minmax, entropy, percentile) into Q/DQ files; modelopt_engine: ModelOpt
report     token agreement and PSNR of INT8 against FP32
calibrate  the whole run, its cache and the model directory update; cli: ``provq-calibrate``
"""
