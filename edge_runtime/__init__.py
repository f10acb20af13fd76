"""provq.edge_runtime: the torch-free side of provq that runs on Jetson-class devices.

It imports with numpy, OpenCV and ONNX Runtime (or TensorRT) alone, never torch.

    formats               the contracts every stage shares: errors, atomic files, versions, file types, graph
                          names, pixel levels, the manifest schema (docs/ARCHITECTURE.md lists them)
    sources, source_uri   frames from files, folders, globs, V4L2, RTSP, CSI, GStreamer, sample://
    preprocess            frames -> model input and back (the one preprocessing, shared with calibration)
    manifest              the model directory and its manifest.json; assets/model: the shipped default model
    backends              ONNX Runtime and TensorRT behind encode/decode; trt_runner, cuda_shim, engine_meta
    tokenstream, bitpack  the .ptok token stream (docs/PTOK.md)
    pipeline, outputs     the threaded capture -> inference -> writing pipeline; run_cli / decode_cli: the commands
    console               the error frame, stop signals and status line every command shares
    bench, bench_*        provq-bench; quality: PSNR and SSIM
    doctor                provq-doctor: what this machine has for each backend; opencv_import, commands: cv2 checks
    assets/sample         real photos and a short real clip (see ATTRIBUTION.md)
"""
