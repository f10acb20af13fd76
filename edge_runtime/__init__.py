"""provq.edge_runtime: the torch-free side of provq that runs on Jetson-class devices.

It must import with numpy, OpenCV and ONNX Runtime (or TensorRT) alone, never torch. For now it carries the
shipped sample data (``assets/sample``: real photos and a short real clip, see ``ATTRIBUTION.md``); the streaming
runtime (sources, preprocessing, backends, token streams) is built on top of it.
"""
