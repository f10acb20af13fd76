"""Interleaved rANS (range asymmetric numeral systems) over numpy arrays: the entropy coder of ``.ptok`` codec ctx.

Written here rather than taken from a library because the one maintained Python range/ANS coder with custom models
(``constriction`` 0.5.0) ships no wheels for aarch64 Linux, where the runtime runs, and a per-symbol coder in pure
Python is far too slow for 6,912 ids a frame. The layout is specified byte by byte in docs/PTOK.md ("rANS").

A symbol is coded as an interval ``[start, start + freq)`` of ``M = 2**16`` (``freq >= 1``). Symbol ``i`` of a chunk
goes to lane ``i % lanes``; every lane is an independent rANS coder with a 32-bit state in ``[2**16, 2**32)`` that
exchanges 16-bit words with its own word stream. Symbols that share a lane-row (``lanes`` consecutive symbols) are
coded by one vectorised numpy step, so the Python loop runs ``symbols / lanes`` times.

    enc = RansEncoder()
    enc.put(starts, freqs)                     # int arrays of equal length, any number of calls
    data = enc.finish(lanes=32)                # bytes: LEB128 word counts, then the lanes' words
    dec = RansDecoder(data)
    syms = dec.decode(count, lookup)           # lookup(slots, first) -> (symbols, starts, freqs); see decode
    dec.check()                                # every lane back at its initial state, every word used
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PRECISION = 16
M = 1 << PRECISION  # total frequency of every distribution
LOW = 1 << 16  # lane state lower bound; also the initial state
_MASK16, _SHIFT16 = np.uint64(0xFFFF), np.uint64(16)
MAX_LANES = 255

Lookup = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


class RansError(ValueError):
    """The coded data is inconsistent (damaged or cut short)."""


def _leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for number in values.tolist():
        rest = number
        while True:
            byte, rest = rest & 0x7F, rest >> 7
            out.append(byte | (0x80 if rest else 0))
            if not rest:
                break
    return bytes(out)


def _read_leb128(data: memoryview, pos: int, count: int) -> tuple[list[int], int]:
    values = []
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 35:
                raise RansError("lane length runs past the data")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(value)
    return values, pos


class RansEncoder:
    """Collects (start, freq) intervals in decoding order; ``finish`` codes them all (rANS codes in reverse)."""

    def __init__(self) -> None:
        self._starts: list[np.ndarray] = []
        self._freqs: list[np.ndarray] = []

    def put(self, starts: np.ndarray, freqs: np.ndarray) -> None:
        self._starts.append(np.asarray(starts, dtype=np.uint64).reshape(-1))
        self._freqs.append(np.asarray(freqs, dtype=np.uint64).reshape(-1))

    @property
    def symbols(self) -> int:
        return sum(a.size for a in self._starts)

    def finish(self, lanes: int) -> bytes:
        """u8 lanes, ``lanes`` LEB128 word counts, then each lane's u16 little-endian words, lane 0 first."""
        if not 1 <= lanes <= MAX_LANES:
            raise ValueError(f"lanes must be in [1, {MAX_LANES}], got {lanes}")
        starts = np.concatenate(self._starts) if self._starts else np.zeros(0, np.uint64)
        freqs = np.concatenate(self._freqs) if self._freqs else np.zeros(0, np.uint64)
        if freqs.size and (freqs.min() < 1 or (starts + freqs).max() > M):
            raise ValueError("an interval lies outside [0, M) or is empty")
        state = np.full(lanes, LOW, dtype=np.uint64)
        n = freqs.size
        rows = -(-n // lanes)
        emit = np.zeros((rows, lanes), dtype=bool)  # lane k emitted a word while coding row r
        words = np.zeros((rows, lanes), dtype=np.uint16)
        for r in range(rows - 1, -1, -1):  # symbol r * lanes + j sits in lane j
            f = freqs[r * lanes : (r + 1) * lanes]
            width = f.size
            x = state[:width]
            out = x >= (f << _SHIFT16)
            emit[r, :width] = out
            words[r, :width] = x & _MASK16
            q, rem = np.divmod(np.where(out, x >> _SHIFT16, x), f)
            state[:width] = (q << _SHIFT16) + rem + starts[r * lanes : r * lanes + width]
        # the decoder reads each lane's words in the reverse of emission order: ascending rows
        counts = 2 + emit.sum(0)
        lane_words = words.T[emit.T]  # lane by lane, rows ascending
        heads = np.stack([state & _MASK16, state >> _SHIFT16], 1).astype("<u2")
        starts_at = np.concatenate([[0], np.cumsum(counts - 2)])
        streams = [heads[k].tobytes() + lane_words[starts_at[k] : starts_at[k + 1]].astype("<u2").tobytes()
                   for k in range(lanes)]  # fmt: skip
        return bytes([lanes]) + _leb128(counts) + b"".join(streams)


class RansDecoder:
    """Decodes the intervals ``RansEncoder.finish`` wrote, in the same order, batch by batch."""

    def __init__(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if not view or not 1 <= view[0] <= MAX_LANES:
            raise RansError("no lane count")
        self.lanes = view[0]
        counts, pos = _read_leb128(view, 1, self.lanes)
        if pos + 2 * sum(counts) != len(view) or min(counts) < 2:
            raise RansError("lane lengths disagree with the data size")
        words = np.frombuffer(view[pos:], dtype="<u2").astype(np.uint64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._ends = self._offsets[1:]
        first = self._offsets[:-1]
        self._words = words
        self._state = words[first] | (words[first + 1] << np.uint64(16))
        self._ptr = first + 2  # next word of each lane
        self._next = 0  # index of the next symbol

    def decode(self, count: int, lookup: Lookup) -> np.ndarray:
        """Decode the next ``count`` symbols. ``lookup(slots, first)`` gets the slots (values in [0, M)) of symbols
        ``first .. first + len(slots) - 1`` of this batch and returns their symbols and intervals (int arrays).

        A lane that reads past its own words is only detected by ``check`` (its reads are clamped to the data)."""
        out = np.empty(count, dtype=np.int64)
        lanes, done = self.lanes, 0
        state, ptr, words, last = self._state, self._ptr, self._words, self._words.size - 1
        while done < count:
            lane0 = (self._next + done) % lanes
            width = min(lanes - lane0, count - done)
            lane = slice(lane0, lane0 + width)
            x = state[lane]
            slots = x & _MASK16
            syms, starts, freqs = lookup(slots, done)
            x = freqs * (x >> _SHIFT16) + slots - starts
            need = x < LOW
            p = ptr[lane]
            state[lane] = np.where(need, (x << _SHIFT16) | words[np.minimum(p, last)], x)
            ptr[lane] = p + need
            out[done : done + width] = syms
            done += width
        self._next += count
        return out

    def check(self) -> None:
        """Raise RansError unless every word was used and every lane is back at its initial state LOW."""
        if (self._ptr != self._ends).any() or (self._state != LOW).any():
            raise RansError("the coded data does not end where its symbols do")


def binary_lookup(f1: np.ndarray) -> Lookup:
    """Symbols 0/1 with P(1) = f1 / M per symbol (1 <= f1 < M): 0 is [0, M - f1), 1 is [M - f1, M)."""
    f1 = np.asarray(f1, dtype=np.uint64)
    split = np.uint64(M) - f1

    def lookup(slots: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sp = split[first : first + slots.size]
        one = slots >= sp
        return one, sp * one, np.where(one, f1[first : first + slots.size], sp)

    return lookup


def binary_intervals(bits: np.ndarray, f1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, freqs) of binary symbols under ``binary_lookup``'s convention."""
    f1 = np.asarray(f1, dtype=np.int64)
    one = np.asarray(bits, dtype=bool)
    return np.where(one, M - f1, 0), np.where(one, f1, M - f1)


def rows_lookup(cdf: np.ndarray) -> Lookup:
    """One distribution per symbol: ``cdf`` n x (S + 1) rows, 0 first, M last, non-decreasing."""
    cdf = np.asarray(cdf, dtype=np.uint64)

    def lookup(slots: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = cdf[first : first + slots.size]
        syms = (rows[:, 1:] <= slots[:, None]).sum(1)
        pick = np.arange(syms.size)
        start = rows[pick, syms]
        return syms, start, rows[pick, syms + 1] - start

    return lookup


def shared_lookup(cdf: np.ndarray) -> Lookup:
    """One distribution for every symbol of the batch: ``cdf`` (S + 1), 0 first, M last."""
    cdf = np.asarray(cdf, dtype=np.uint64)

    def lookup(slots: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        syms = np.searchsorted(cdf, slots, side="right") - 1
        return syms, cdf[syms], cdf[syms + 1] - cdf[syms]

    return lookup


def uniform_lookup(bits: int) -> Lookup:
    """Uniform values in [0, 2**bits), bits <= 16: value v is [v << (16 - bits), (v + 1) << (16 - bits))."""
    shift = np.uint64(PRECISION - bits)
    freq = np.uint64(1 << (PRECISION - bits))

    def lookup(slots: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        syms = slots >> shift
        return syms, syms << shift, freq

    return lookup
