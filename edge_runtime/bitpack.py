"""Fixed-width bit packing of token ids (numpy, vectorised). Part of the ``.ptok`` format (docs/PTOK.md).

Bit order is little-endian throughout: value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, its least
significant bit first, and stream bit ``j`` is bit ``j % 8`` (value ``1 << (j % 8)``) of byte ``j // 8``. The unused
high bits of the last byte are zero. This is ``numpy.packbits(..., bitorder="little")`` applied to each value's bits
written least significant first.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 32
_BLOCK = 1 << 16  # values per slab: bounds the temporary bit matrix; a multiple of 8, so slabs stay byte aligned


def bits_for(codebook_size: int) -> int:
    """Bits per id for ids in [0, K): ceil(log2 K), at least 1 (K = 2 -> 1, 3 -> 2, 1024 -> 10, 1025 -> 11)."""
    return max(1, (int(codebook_size) - 1).bit_length())


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits occupy."""
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Non-negative integers below ``2**bits`` -> packed bytes (flattened in C order)."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    flat = np.asarray(values).reshape(-1).astype(np.uint32)
    shifts = np.arange(bits, dtype=np.uint32)
    parts = []
    for start in range(0, flat.size, _BLOCK):
        matrix = (flat[start : start + _BLOCK, None] >> shifts) & 1  # one row per value, LSB first
        parts.append(np.packbits(matrix.astype(np.uint8).reshape(-1), bitorder="little").tobytes())
    return b"".join(parts)


def unpack(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Packed bytes -> ``count`` values as int64. ``data`` must hold at least ``packed_size(count, bits)`` bytes."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    buf = np.frombuffer(data, dtype=np.uint8, count=packed_size(count, bits))
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    step = _BLOCK * bits // 8  # bytes per slab
    for i, start in enumerate(range(0, count, _BLOCK)):
        n = min(_BLOCK, count - start)
        matrix = np.unpackbits(buf[i * step : i * step + packed_size(n, bits)], count=n * bits, bitorder="little")
        out[start : start + n] = matrix.reshape(n, bits).astype(np.int64) @ weights
    return out


def pack_mask(mask: np.ndarray) -> bytes:
    """Booleans -> one bit each, same bit order (``packed_size(mask.size, 1)`` bytes)."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1), bitorder="little").tobytes()


def unpack_mask(data: bytes | memoryview, count: int) -> np.ndarray:
    """Packed bits -> ``count`` booleans; bits past ``count`` in the last byte are ignored."""
    buf = np.frombuffer(data, dtype=np.uint8, count=packed_size(count, 1))
    return np.unpackbits(buf, count=count, bitorder="little").astype(bool)
