"""The contracts every provq stage shares, defined once here (the runtime is the one stage that ships without torch).

    errors     ProvqError: the one base of every user error (one line naming the problem and the fix; exit 2)
    files      atomic file writing (fsync, then rename), whole directories swapped in, and file sha256
    versions   installed package versions, for the files each stage writes
    media      the image and video file extensions provq reads
    graph      the ONNX graphs' tensor names and node scopes (``images``, ``ids``, ``/quantizer/``...)
    int8_rules which Convs INT8 keeps in FP32, for calibration and quantization-aware training
    pixels     uint8 levels <-> the model's float32 [-1, 1] input (the one preprocessing of training and runtime)
    manifest   manifest.json: one typed schema with its reader and writer

Each module imports only the standard library and numpy.
"""
