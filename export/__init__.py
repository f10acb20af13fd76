"""provq.export: ONNX export, TensorRT-compatibility checks, manifests and TensorRT engine builds.

Not built yet: this package is the asked-for home of export and holds no code so far.
"""
