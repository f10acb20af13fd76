"""provq.calibration: INT8 post-training quantization of the exported ONNX files (quantizer kept in FP32).

Not built yet: this package is the asked-for home of calibration and holds no code so far.
"""
