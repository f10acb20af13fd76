"""provq.export: ONNX export, TensorRT-compatibility checks, manifests and TensorRT engine builds.

onnx_export   checkpoint -> encoder.onnx, decoder.onnx, manifest.json (needs torch); graphs: what is exported
fp16_graph    FP32 ONNX -> FP16 ONNX (FP32 search), and a CPU emulation of its rounding (needs onnx)
trt_check     static check against TensorRT 10.3's ONNX parser and Q/DQ rules (needs onnx)
engine        TensorRT engine builds with a cache and sidecars (needs tensorrt on the device; never torch)
cli           ``provq-export``; engine_cli: ``provq-export engine``
"""
