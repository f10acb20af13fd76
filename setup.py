"""Installs the four stage folders as the ``provq`` namespace: ``provq.train``, ``provq.calibration``,
``provq.export`` and ``provq.edge_runtime``.

    pip install torch==2.13.0 -e ".[train,dev]"    # workstation / CI (CPU torch pinned)
    pip install ".[edge]"                           # a Jetson: no torch
"""

from __future__ import annotations

from setuptools import find_packages, setup

STAGES = {
    "provq.train": "train",
    "provq.calibration": "calibration",
    "provq.export": "export",
    "provq.edge_runtime": "edge_runtime",
}
# Each stage with its subpackages (edge_runtime.formats, .sources, .tokenstream, ...), so that a non-editable install
# carries them too.
PACKAGES = {
    **STAGES,
    **{
        f"{name}.{sub}": f"{folder}/{sub.replace('.', '/')}"
        for name, folder in STAGES.items()
        for sub in find_packages(folder)
    },
}

# The runtime needs numpy, OpenCV and ONNX Runtime; calibration and the TensorRT check also need onnx. On aarch64
# (Jetson) JetPack's own OpenCV (with GStreamer) and NVIDIA's onnxruntime-gpu wheel must not be shadowed by PyPI
# builds, so they are required only elsewhere; and that system OpenCV is built against the system's numpy 1.x, which
# a numpy 2 in the venv would shadow (onnx's ml_dtypes >= 0.7 asks for numpy 2), so numpy stays below 2 there.
BASE = [
    "numpy>=1.24; platform_machine != 'aarch64'",
    "numpy>=1.24,<2; platform_machine == 'aarch64'",
    "opencv-python-headless>=4.8; platform_machine != 'aarch64'",
    "onnxruntime>=1.17; platform_machine != 'aarch64'",
    "av>=12",  # video files: the same decoded pixels on x86 and aarch64 (edge_runtime/sources/video_readers.py)
    "onnx>=1.15",  # provq-calibrate and provq-export check read and write ONNX graphs; the runtime for --stable-tokens
]

EXTRAS = {
    # Workstation side: training, the study and ONNX export. Any torch >= 2.4 works; CI pins torch==2.13.0.
    # wids (the WebDataset project's indexed tar reader) gives random access to tar shards; braceexpand expands
    # shard patterns such as shards/{000000..000099}.tar.
    # nvidia-modelopt: quantization-aware training (provq-train --qat) and loading its checkpoints, the default model
    # among them; its torch package also imports requests and huggingface_hub without declaring them (0.47.0).
    "train": [
        "torch>=2.4",
        "tqdm>=4.60",
        "onnx>=1.15",
        "wids>=0.1.11",
        "braceexpand>=0.1.7",
        "nvidia-modelopt>=0.47.0",
        "requests>=2.28",
        "huggingface_hub>=0.24",
    ],
    # What a Jetson needs beyond the base: CUDA bindings for the TensorRT backend, zstd for token streams.
    "edge": ["cuda-python>=12.0", "zstandard>=0.21"],
    # The training study's peers (vector-quantize-pytorch's VectorQuantize and FSQ) and its plot.
    "study": ["vector-quantize-pytorch>=1.20", "matplotlib>=3.7"],
    # provq-bench's H.264 row (x264 through PyAV) and its plots.
    "bench": ["matplotlib>=3.7"],
    # Tests and lint. scikit-image and scikit-learn provide real photos the shipped model has never seen.
    # zstandard lets the token-stream tests cover the zstd codec too; av the benchmark's H.264 row; webdataset is
    # the shard writer of tools/build_corpus.py, whose test reads its shards back through the training data path.
    "dev": [
        "pytest>=7.4",
        "ruff>=0.5",
        "hypothesis>=6.90",
        "scikit-image>=0.21",
        "scikit-learn>=1.3",
        "zstandard>=0.21",
        "webdataset>=0.2",
    ],
}

setup(
    name="provq",
    version="0.1.0",
    description="Edge-deployable image/video-frame tokenizer trained with progressive vector quantization (ProVQ)",
    long_description=open("README.md", encoding="utf-8").read(),  # noqa: SIM115
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={
        "provq.train": ["assets/*.pt", "assets/*.md"],
        "provq.edge_runtime": ["assets/sample/*", "assets/sample/images/*", "assets/model/*"],
    },
    include_package_data=False,
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "provq-train = provq.train.cli:main",
            "provq-study = provq.train.study:main",
            "provq-export = provq.export.cli:main",
            "provq-calibrate = provq.calibration.cli:main",
            "provq-run = provq.edge_runtime.commands:run",
            "provq-decode = provq.edge_runtime.commands:decode",
            "provq-bench = provq.edge_runtime.commands:bench",
            "provq-doctor = provq.edge_runtime.doctor:main",
        ]
    },
)
