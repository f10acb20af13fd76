"""The state a FAKE TensorRT + cuda-python share, and the fake "computation" its engines do (tests only).

``FakeState`` records what the fake saw (builds, executions, device memory, streams); tests read it. The fake
engines fill their outputs with ``fake_encode`` / ``fake_decode``, deterministic functions of the input, and the
fake ONNX parser reads the JSON of ``fake_onnx``. See tests/fake_tensorrt.py for the whole fake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fake_cudart import FakeStream

PLAN_MAGIC = b"FAKE-TENSORRT-PLAN\n"  # the first bytes of every serialized fake engine


def fake_encode(images: np.ndarray, factor: int) -> np.ndarray:
    """The fake encoder: N x 3 x H x W float32 -> N x H/f x W/f int32, from each f x f block's mean."""
    n, c, h, w = images.shape
    blocks = images.reshape(n, c, h // factor, factor, w // factor, factor).astype(np.float64).mean(axis=(1, 3, 5))
    return (np.floor(blocks * 1000).astype(np.int64) % 997).astype(np.int32)


def fake_decode(ids: np.ndarray, factor: int) -> np.ndarray:
    """The fake decoder: N x h x w int32 -> N x 3 x h*f x w*f float32 (id / 1000 + channel index)."""
    up = np.repeat(np.repeat(ids, factor, axis=1), factor, axis=2).astype(np.float32) * np.float32(0.001)
    return (up[:, None] + np.arange(3, dtype=np.float32)[None, :, None, None]).astype(np.float32)


def fake_onnx(kind: str, input_name: str, output_name: str, factor: int, **extra: Any) -> str:
    """The JSON a test writes into a dummy ``.onnx`` file for the fake parser."""
    if kind == "encoder":
        io = {"input": [input_name, [-1, 3, -1, -1], "FLOAT"], "output": [output_name, "INT32"]}
    else:
        io = {"input": [input_name, [-1, -1, -1], "INT32"], "output": [output_name, "FLOAT"]}
    return json.dumps({"fake_onnx": kind, "factor": factor, **io, **extra})


@dataclass
class FakeState:
    """What the fake saw; tests read it."""

    version: str
    device_name: str = "Orin"
    compute_capability: tuple[int, int] = (8, 7)
    dla_cores: int = 2
    no_device: bool = False
    memory_limit: int = 1 << 30
    builds: list[dict[str, Any]] = field(default_factory=list)
    deserialized: int = 0
    executions: int = 0
    memory: dict[int, bytearray] = field(default_factory=dict)
    next_ptr: int = 0x7F0000000000
    mallocs: list[int] = field(default_factory=list)  # sizes, in order
    frees: int = 0
    streams: dict[int, FakeStream] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def malloc(self, nbytes: int) -> int:
        ptr = self.next_ptr
        self.next_ptr += (nbytes + 511) // 256 * 256
        self.memory[ptr] = bytearray(nbytes)
        self.mallocs.append(nbytes)
        return ptr

    def device_bytes(self, ptr: int, nbytes: int) -> bytearray:
        """The allocation at base address ``ptr``; AssertionError when it is unknown or too small."""
        if ptr not in self.memory:
            raise AssertionError(f"fake CUDA: {ptr:#x} is not a device allocation")
        if len(self.memory[ptr]) < nbytes:
            raise AssertionError(f"fake CUDA: {nbytes} bytes overrun the {len(self.memory[ptr])}-byte buffer")
        return self.memory[ptr]
