"""Context coding of token-id planes (``.ptok`` codec ctx): an adaptive model over what the decoder already has.

The model (specified exactly in docs/PTOK.md, "Codec ctx") is reset at every chunk and driven by one code path for
both directions, so the encoder and the decoder cannot disagree. Every probability is an integer computation
(no floating point), so the coded bytes are the same on every platform. Per frame of a chunk:

- keyframe: the cells in four interleaved phases (even/even, even/odd, odd/even, odd/odd rows/columns); a cell of a
  later phase predicts its id from neighbours decoded in earlier phases (a candidate symbol: "neighbour j" or
  "escape"); escaped ids are coded with an adaptive frequency table.
- delta: the change mask in the same four phases, each bit under an adaptive binary model whose context is whether
  the cell changed in the previous frame, how often it changed in the chunk, how many of its 8 neighbours changed in
  the previous frame and how many of its already decoded neighbours changed in this frame. Then the new ids of the
  changed cells, in cell order: a candidate symbol over the id the cell had before its last change, the id that
  last followed the cell's current id anywhere in the chunk, and the previous frame's ids of its 4 neighbours; or
  an escape. Version 3 (a stream coded against its codebook) codes an escaped new id as its rank among the ``n``
  codes nearest the cell's previous code (``near_codes``), or "farther", and only those go to the frequency table;
  version 2 sends every escape to the table.

Batches of symbols whose contexts are all known go to the rANS coder together (edge_runtime/rans.py), and the
adaptive counts are updated after each batch, so nothing loops in Python per symbol.

    payload = encode_chunk(frames, grid, K)       # frames: [(keyframe: bool, ids h*w int)], in chunk order
    enc = ChunkEncoder(grid, K); enc.add(keyframe, ids); ...; payload = enc.finish()    # the same, frame by frame
    ids = decode_chunk(payload, kinds, grid, K)   # list of h*w int64 arrays; CoderError when damaged
    near = near_codes(codebook, n)                # version 3: pass near= to all three
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from . import bitpack, rans

LANES = 64  # most rANS lanes a writer uses: fewer Python steps per symbol against ~6 bytes of state per lane
ESCAPE = 6  # candidate symbol "none of the candidates"
CANDIDATES = 6  # delta: [before last change, last follower, left, up, right, down]; keyframe: slots 2-5 only
Q_BITS = 12  # fixed-point bits of a cell's change probability
HIGH_BITS = 12  # escaped ids: at most this many high bits go through the adaptive table, the rest are uniform
MASK_CONTEXTS = 4 * 3 * 2 * 4 * 3  # phase, decoded neighbours changed, changed last frame, activity, neighbours last
CAND_CONTEXTS = 20 + 30  # delta: 4 validity patterns x 5 neighbour counts; keyframe: passes 1-6 x 5
MASK_PRIOR = (12, 1)  # initial (unchanged, changed) counts of every mask context
MASK_LIMIT = 1 << 12  # halve a mask context's counts when their sum exceeds this
CAND_LIMIT = 1 << 10
ESC_LIMIT = 1 << 20
NEAR = 64  # version 3: escaped new ids are ranked among this many codes nearest the previous one (K - 1 if fewer)
NEAR_BITS = 20  # codebook entries are scaled to integers of at most this many bits for the exact distances
NEAR_BLOCK = 256  # codebook rows ranked at a time (bounds the memory for large K)
NEAR_MAX_K = 4096  # writers use version 3 up to this K
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row parity, column parity) of phases 0-3
_KEY_NEIGHBOURS = ((0, -1), (0, 1)), ((-1, 0), (1, 0), (-1, -1), (-1, 1)), ((0, -1), (0, 1), (-1, 0), (1, 0))
# keyframe passes: (row, column) residues mod 4 of the cells, the offsets of their candidates (cells of earlier
# passes); the first pass (every 4th row and column) has none: its ids are escapes
_KEY_PASSES = (
    (((0, 0),), ()),
    (((0, 2),), tuple((2 * r, 2 * c) for r, c in _KEY_NEIGHBOURS[0])),
    (((2, 0),), tuple((2 * r, 2 * c) for r, c in _KEY_NEIGHBOURS[1])),
    (((2, 2),), tuple((2 * r, 2 * c) for r, c in _KEY_NEIGHBOURS[2])),
    (((0, 1), (0, 3), (2, 1), (2, 3)), _KEY_NEIGHBOURS[0]),
    (((1, 0), (1, 2), (3, 0), (3, 2)), _KEY_NEIGHBOURS[1]),
    (((1, 1), (1, 3), (3, 1), (3, 3)), _KEY_NEIGHBOURS[2]),
)
_DELTA_NEIGHBOURS = ((0, -1), (-1, 0), (0, 1), (1, 0))


class CoderError(ValueError):
    """A ctx payload that does not decode (damaged)."""


def _neighbours8(plane: np.ndarray) -> np.ndarray:
    """h x w bool -> h x w int64: how many of each cell's 8 neighbours are set (outside the grid: unset)."""
    p = np.pad(plane.astype(np.int64), 1)
    h, w = plane.shape
    return sum(p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)


def _gather(plane: np.ndarray, rows: np.ndarray, cols: np.ndarray, offsets: tuple) -> np.ndarray:
    """Ids of the cells at (rows + dr, cols + dc) for each offset: n x len(offsets) int64, -1 outside the grid."""
    h, w = plane.shape
    out = np.full((rows.size, len(offsets)), -1, dtype=np.int64)
    for j, (dr, dc) in enumerate(offsets):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        out[inside, j] = plane[r[inside], c[inside]]
    return out


def _dedup(cand: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """Candidates n x C: a slot becomes -1 when it repeats an earlier valid slot or equals ``exclude``."""
    cand = cand.copy()
    for j in range(cand.shape[1]):
        bad = cand[:, j] < 0
        if exclude is not None:
            bad |= cand[:, j] == exclude
        for k in range(j):
            bad |= cand[:, j] == cand[:, k]
        cand[bad, j] = -1
    return cand


def _binary_q(counts: np.ndarray) -> np.ndarray:
    """(c0, c1) rows -> probability of 1 in 12-bit fixed point: ((2 c1 + 1) 4096) div (2 (c0 + c1) + 2), in
    [1, 4095]."""
    q = ((2 * counts[..., 1] + 1) << Q_BITS) // (2 * counts.sum(-1) + 2)
    return np.clip(q, 1, (1 << Q_BITS) - 1)


def _pattern_cdf(q: np.ndarray) -> np.ndarray:
    """Per-cell probabilities n x 4 (12-bit, 0 for cells outside the grid) -> cdf n x 17 of the block's 4-bit change
    pattern (bit j: cell j changed), the cells taken as independent: pattern v has weight w(v) = prod_j (q_j if bit j
    of v else 4096 - q_j), the weights sum to 2**48, and its frequency is 1 + (w(v) (M - 16)) >> 48; the rounding
    remainder goes to the first largest weight."""
    one = 1 << Q_BITS
    w = np.ones((q.shape[0], 16), dtype=np.uint64)
    patterns = np.arange(16)
    for j in range(4):
        on = ((patterns >> j) & 1).astype(bool)
        w *= np.where(on[None, :], q[:, j : j + 1], one - q[:, j : j + 1]).astype(np.uint64)
    freq = (1 + ((w * np.uint64(rans.M - 16)) >> np.uint64(4 * Q_BITS))).astype(np.int64)
    freq[np.arange(q.shape[0]), w.argmax(1)] += rans.M - freq.sum(1)
    return np.concatenate([np.zeros((q.shape[0], 1), np.int64), np.cumsum(freq, 1)], 1)


def _rows_cdf(counts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Counts n x S and validity n x S -> cdf n x (S + 1): valid symbols get 1 + c (M - v) div total, invalid 0, and
    the rounding remainder goes to the last symbol (escape, always valid)."""
    c = np.where(valid, counts, 0)
    nvalid = valid.sum(1, keepdims=True)
    freq = np.where(valid, 1 + (c * (rans.M - nvalid)) // c.sum(1, keepdims=True), 0)
    freq[:, -1] += rans.M - freq.sum(1)
    return np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, 1)], 1)


def _shared_cdf(counts: np.ndarray) -> np.ndarray:
    """Counts S (all >= 1) -> cdf S + 1: 1 + c (M - S) div total each, the remainder to the first largest count."""
    freq = 1 + (counts * (rans.M - counts.size)) // counts.sum()
    freq[int(np.argmax(counts))] += rans.M - int(freq.sum())
    return np.concatenate([[0], np.cumsum(freq)])


def _halve(counts: np.ndarray, limit: int) -> None:
    """Rows of ``counts`` (or the whole 1-D table) whose sum exceeds ``limit`` become (c + 1) div 2, in place."""
    if counts.ndim == 1:
        if counts.sum() > limit:
            counts[:] = (counts + 1) // 2
        return
    big = counts.sum(-1) > limit
    if big.any():
        counts[big] = (counts[big] + 1) // 2


def near_count(codebook_size: int) -> int:
    """The ``near`` a writer puts in the header for K = ``codebook_size``: NEAR, or K - 1 when smaller; 0 (version 2)
    above NEAR_MAX_K, where the table would take too long to build at every start (K x K distances: about 1 s for
    K = 4096 on a 2-core x86 CPU, 16 times that for K = 16384)."""
    return min(NEAR, codebook_size - 1) if codebook_size <= NEAR_MAX_K else 0


def near_codes(codebook: np.ndarray, count: int) -> np.ndarray:
    """K x count int64: for each code the ``count`` other codes nearest to it, nearest first (docs/PTOK.md, "Near
    codes"): squared Euclidean distances of the codebook scaled exactly to integers, ties to the lower id, so the
    table is the same on every platform. ``codebook`` is K x D float32 (the model's, as its fingerprint hashes it)."""
    return _near_codes(np.ascontiguousarray(codebook, dtype="<f4").tobytes(), len(codebook), count)


@functools.lru_cache(maxsize=4)
def _near_codes(data: bytes, k: int, count: int) -> np.ndarray:
    cb = np.frombuffer(data, dtype="<f4").reshape(k, -1).astype(np.float64)
    peak = float(np.abs(cb).max())
    exponent = int(np.frexp(peak)[1]) if peak > 0 else 0  # peak < 2 ** exponent
    q = np.rint(np.ldexp(cb, NEAR_BITS - exponent)).astype(np.int64)  # |q| <= 2 ** NEAR_BITS, exact
    norms = (q * q).sum(1)
    ids = np.arange(k, dtype=np.int64)
    keyed = cb.shape[1] * k < 1 << 17  # (distance, id) fits one int64 key: D * 2 ** (2 NEAR_BITS + 2) * K < 2 ** 63
    out = np.empty((k, count), dtype=np.int64)
    for start in range(0, k, NEAR_BLOCK):
        rows = slice(start, min(k, start + NEAR_BLOCK))
        dist = norms[rows, None] + norms[None, :] - 2 * (q[rows] @ q.T)  # exact: < D * 2 ** (2 NEAR_BITS + 2)
        dist[np.arange(dist.shape[0]), ids[rows]] = -1  # the code itself sorts first, then is dropped
        if keyed:  # unique keys: the partial sort is exact and far cheaper than sorting whole rows
            key = dist * k + ids
            part = np.argpartition(key, count, axis=1)[:, : count + 1]
            order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1), 1)
        else:
            order = np.lexsort((np.broadcast_to(ids, dist.shape), dist), axis=1)
        out[rows] = order[:, 1 : count + 1]
    return out


class _Io:
    """One direction of the coder: ``code_*(values, ...)`` puts known values (encoder) or decodes them (values None)."""

    def __init__(self, encoder: rans.RansEncoder | None, decoder: rans.RansDecoder | None) -> None:
        self.enc, self.dec = encoder, decoder

    def binary(self, bits: np.ndarray | None, f1: np.ndarray) -> np.ndarray:
        if self.dec is not None:
            return self.dec.decode(f1.size, rans.binary_lookup(f1)).astype(bool)
        self.enc.put(*rans.binary_intervals(bits, f1))
        return bits

    def rows(self, syms: np.ndarray | None, cdf: np.ndarray) -> np.ndarray:
        if self.dec is not None:
            return self.dec.decode(cdf.shape[0], rans.rows_lookup(cdf))
        pick = np.arange(syms.size)
        self.enc.put(cdf[pick, syms], cdf[pick, syms + 1] - cdf[pick, syms])
        return syms

    def shared(self, syms: np.ndarray | None, cdf: np.ndarray, count: int) -> np.ndarray:
        if self.dec is not None:
            return self.dec.decode(count, rans.shared_lookup(cdf))
        self.enc.put(cdf[syms], cdf[syms + 1] - cdf[syms])
        return syms

    def uniform(self, values: np.ndarray | None, bits: int, count: int) -> np.ndarray:
        if self.dec is not None:
            return self.dec.decode(count, rans.uniform_lookup(bits))
        shift = rans.PRECISION - bits
        self.enc.put(values << shift, np.full(values.size, 1 << shift, dtype=np.int64))
        return values


class _ChunkModel:
    """The adaptive state of one chunk and the frame coding that reads and updates it."""

    def __init__(self, grid: tuple[int, int], codebook_size: int, io: _Io, near: np.ndarray | None) -> None:
        self.h, self.w = grid
        self.k = codebook_size
        bits = bitpack.bits_for(codebook_size)
        self.shift = bits - min(bits, HIGH_BITS)  # low bits of an escaped id coded uniformly
        self.io = io
        rows, cols = np.divmod(np.arange(self.h * self.w), self.w)
        self.rows, self.cols = rows, cols
        self.key_passes = [
            (np.flatnonzero(np.isin((rows % 4) * 4 + cols % 4, [r * 4 + c for r, c in residues])), offsets)
            for residues, offsets in _KEY_PASSES
        ]
        bh, bw = -(-self.h // 2), -(-self.w // 2)  # the change mask is coded in 2 x 2 blocks
        br, bc = np.divmod(np.arange(bh * bw), bw)
        self.block_phases = [np.flatnonzero((br % 2 == pr) & (bc % 2 == pc)) for pr, pc in _PHASES]
        cr, cc = 2 * br[:, None] + np.array([0, 0, 1, 1]), 2 * bc[:, None] + np.array([0, 1, 0, 1])
        self.block_cells = np.where((cr < self.h) & (cc < self.w), cr * self.w + cc, -1)  # cell j of each block
        self.prev: np.ndarray | None = None  # previous frame's ids, flat int64
        self.last = np.zeros(self.h * self.w, dtype=bool)  # changed in the previous frame (a delta)
        self.activity = np.zeros(self.h * self.w, dtype=np.int64)  # changes of each cell so far in the chunk
        self.back = np.full(self.h * self.w, -1, dtype=np.int64)  # the id each cell had before its last change
        self.follow_from = np.zeros(0, dtype=np.int64)  # sorted ids ...
        self.follow_to = np.zeros(0, dtype=np.int64)  # ... and the id that last replaced each of them
        self.mask = np.tile(np.array(MASK_PRIOR, dtype=np.int64), (MASK_CONTEXTS, 1))
        self.cand = np.ones((CAND_CONTEXTS, CANDIDATES + 1), dtype=np.int64)
        self.esc = np.ones(((codebook_size - 1) >> self.shift) + 1, dtype=np.int64)  # escaped ids' counts
        self.near = near  # K x n nearest codes (version 3), or None
        self.rank = None if near is None else np.ones(near.shape[1] + 1, dtype=np.int64)  # ranks' counts, n: farther

    def frame(self, keyframe: bool, ids: np.ndarray | None) -> np.ndarray:
        """Code one frame (ids flat int64, or None to decode it); returns the frame's ids."""
        if keyframe or self.prev is None:
            out = self._keyframe(ids)
            self.last = np.zeros_like(self.last)
        else:
            out = self._delta(ids)
        self.prev = out
        return out

    def _keyframe(self, ids: np.ndarray | None) -> np.ndarray:
        out = np.full(self.h * self.w, -1, dtype=np.int64)
        plane = out.reshape(self.h, self.w)
        for index, (cells, offsets) in enumerate(self.key_passes):
            if not cells.size:
                continue
            if not offsets:
                out[cells] = self._escapes(None if ids is None else ids[cells], cells.size)
                continue
            cand = np.full((cells.size, CANDIDATES), -1, dtype=np.int64)
            cand[:, 2 : 2 + len(offsets)] = _gather(plane, self.rows[cells], self.cols[cells], offsets)
            cand = _dedup(cand, None)
            ctx = 20 + (index - 1) * 5 + (cand[:, 2:] >= 0).sum(1)
            out[cells] = self._candidates(None if ids is None else ids[cells], cand, ctx)
        return out

    def _delta(self, ids: np.ndarray | None) -> np.ndarray:
        prev = self.prev
        truth = None if ids is None else ids != prev
        changed = np.zeros(self.h * self.w, dtype=bool)
        last_n = np.minimum(_neighbours8(self.last.reshape(self.h, self.w)).reshape(-1), 2)
        base = ((self.last.astype(np.int64) * 4 + np.minimum(self.activity, 3)) * 3) + last_n
        plane = changed.reshape(self.h, self.w)
        for phase, blocks in enumerate(self.block_phases):
            if not blocks.size:
                continue
            cells = self.block_cells[blocks]  # n x 4, -1 outside the grid
            inside = cells >= 0
            safe = np.where(inside, cells, 0)
            seen = np.minimum(_neighbours8(plane).reshape(-1)[safe], 2)
            ctx = (phase * 3 + seen) * 24 + base[safe]
            q = np.where(inside, _binary_q(self.mask[ctx]), 0)
            pattern = None
            if truth is not None:
                pattern = ((truth[safe] & inside) << np.arange(4)).sum(1)
            pattern = self.io.rows(pattern, _pattern_cdf(q))
            bits = ((pattern[:, None] >> np.arange(4)) & 1).astype(bool)
            changed[cells[inside]] = bits[inside]
            self.mask += np.bincount(ctx[inside] * 2 + bits[inside], minlength=2 * MASK_CONTEXTS).reshape(-1, 2)
            _halve(self.mask, MASK_LIMIT)
        cells = np.flatnonzero(changed)
        out = prev.copy()
        if cells.size:
            cand = np.empty((cells.size, CANDIDATES), dtype=np.int64)
            cand[:, 0] = self.back[cells]
            cand[:, 1] = self._follower(prev[cells])
            cand[:, 2:] = _gather(prev.reshape(self.h, self.w), self.rows[cells], self.cols[cells], _DELTA_NEIGHBOURS)
            cand = _dedup(cand, prev[cells])
            ctx = ((cand[:, 0] >= 0) * 2 + (cand[:, 1] >= 0)) * 5 + (cand[:, 2:] >= 0).sum(1)
            out[cells] = self._candidates(None if ids is None else ids[cells], cand, ctx, prev[cells])
            if (out[cells] == prev[cells]).any():
                raise CoderError("a changed cell decoded to its previous id")
        self._learn(prev, out, cells, changed)
        return out

    def _learn(self, prev: np.ndarray, out: np.ndarray, cells: np.ndarray, changed: np.ndarray) -> None:
        """After a delta frame: the history planes and the follower table."""
        self.back[cells] = prev[cells]
        self.activity += changed
        self.last = changed
        if cells.size:  # newest first, so that np.unique keeps the last follower of each id (in cell order)
            src = np.concatenate([prev[cells][::-1], self.follow_from])
            dst = np.concatenate([out[cells][::-1], self.follow_to])
            self.follow_from, first = np.unique(src, return_index=True)
            self.follow_to = dst[first]

    def _follower(self, ids: np.ndarray) -> np.ndarray:
        """The id that last replaced each of ``ids`` in the chunk, -1 where none did."""
        if not self.follow_from.size:
            return np.full(ids.size, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.follow_from, ids), self.follow_from.size - 1)
        return np.where(self.follow_from[at] == ids, self.follow_to[at], -1)

    def _candidates(
        self, ids: np.ndarray | None, cand: np.ndarray, ctx: np.ndarray, prev: np.ndarray | None = None
    ) -> np.ndarray:
        """Candidate symbols for ``ids`` (n), then their escapes (ranked near ``prev``, the cells' previous ids, in
        version 3 delta frames); returns the ids."""
        valid = np.concatenate([cand >= 0, np.ones((cand.shape[0], 1), dtype=bool)], 1)
        syms = None
        if ids is not None:
            hit = (cand == ids[:, None]) & valid[:, :CANDIDATES]
            syms = np.where(hit.any(1), hit.argmax(1), ESCAPE)
        syms = self.io.rows(syms, _rows_cdf(self.cand[ctx], valid))
        if (syms > ESCAPE).any():
            raise CoderError("candidate symbol out of range")
        self.cand += np.bincount(ctx * (ESCAPE + 1) + syms, minlength=self.cand.size).reshape(self.cand.shape)
        _halve(self.cand, CAND_LIMIT)
        esc = syms == ESCAPE
        out = np.where(esc, -1, cand[np.arange(syms.size), np.minimum(syms, CANDIDATES - 1)])
        if prev is None or self.near is None:
            out[esc] = self._escapes(None if ids is None else ids[esc], int(esc.sum()))
        else:
            out[esc] = self._near_escapes(None if ids is None else ids[esc], prev[esc])
        return out

    def _near_escapes(self, ids: np.ndarray | None, prev: np.ndarray) -> np.ndarray:
        """Escaped new ids as their rank among the codes nearest each cell's previous id (n: farther), from one
        adaptive table; the farther ones then go to ``_escapes``."""
        lists = self.near[prev]  # cells x n
        n = lists.shape[1]
        syms = None
        if ids is not None:
            hit = lists == ids[:, None]
            syms = np.where(hit.any(1), hit.argmax(1), n)
        syms = self.io.shared(syms, _shared_cdf(self.rank), prev.size)
        self.rank += np.bincount(syms, minlength=n + 1)
        _halve(self.rank, ESC_LIMIT)
        far = syms == n
        out = np.where(far, -1, lists[np.arange(prev.size), np.minimum(syms, n - 1)])
        out[far] = self._escapes(None if ids is None else ids[far], int(far.sum()))
        return out

    def _escapes(self, ids: np.ndarray | None, count: int) -> np.ndarray:
        """``count`` ids coded without prediction: the high bits by an adaptive table, then the low ``shift`` bits
        uniformly, most significant piece (at most 16 bits) first."""
        if not count:
            return np.zeros(0, dtype=np.int64)
        counts = self.esc
        high = self.io.shared(None if ids is None else ids >> self.shift, _shared_cdf(counts), count)
        counts += np.bincount(high, minlength=counts.size)
        _halve(counts, ESC_LIMIT)
        out = high << self.shift
        left = self.shift
        while left:
            piece = min(left, rans.PRECISION)
            left -= piece
            part = None if ids is None else (ids >> left) & ((1 << piece) - 1)
            out |= self.io.uniform(part, piece, count) << left
        if out.max() >= self.k:
            raise CoderError(f"escaped id {int(out.max())} is not below K = {self.k}")
        return out


def lanes_for(cells: int) -> int:
    """rANS lanes a writer uses for a grid of ``cells`` ids: one per 108 cells, 4 to LANES (64 at 96 x 72)."""
    return min(LANES, max(4, cells // 108))


class ChunkEncoder:
    """Codes a chunk frame by frame (the model runs in ``add``); ``finish`` runs the rANS coder and gives the bytes."""

    def __init__(self, grid: tuple[int, int], codebook_size: int, near: np.ndarray | None = None) -> None:
        self.grid = grid
        self._rans = rans.RansEncoder()
        self._model = _ChunkModel(grid, codebook_size, _Io(self._rans, None), near)

    def add(self, keyframe: bool, ids: np.ndarray) -> None:
        """One frame: ids h*w ints in [0, K); the chunk's first frame is coded as a keyframe whatever the flag."""
        self._model.frame(keyframe, np.asarray(ids, dtype=np.int64).reshape(-1))

    def finish(self) -> bytes:
        return self._rans.finish(lanes_for(self.grid[0] * self.grid[1]))


def encode_chunk(
    frames: list[tuple[bool, np.ndarray]], grid: tuple[int, int], codebook_size: int, near: np.ndarray | None = None
) -> bytes:
    """Frames of one chunk [(keyframe, ids h*w ints in [0, K))] -> the coded bytes (docs/PTOK.md, "Codec ctx");
    ``near``: the ``near_codes`` table of a version 3 stream, None for version 2."""
    encoder = ChunkEncoder(grid, codebook_size, near)
    for keyframe, ids in frames:
        encoder.add(keyframe, ids)
    return encoder.finish()


def decode_chunk(data: bytes | memoryview, kinds: list[bool], grid: tuple[int, int], codebook_size: int,
                 near: np.ndarray | None = None) -> list[np.ndarray]:  # fmt: skip
    """The inverse of ``encode_chunk`` given each frame's keyframe flag; CoderError when the bytes are damaged."""
    try:
        decoder = rans.RansDecoder(data)
        model = _ChunkModel(grid, codebook_size, _Io(None, decoder), near)
        frames = [model.frame(keyframe, None) for keyframe in kinds]
        decoder.check()
    except rans.RansError as err:
        raise CoderError(str(err)) from None
    return frames


def pack_payload(directory: bytes, coded: bytes) -> bytes:
    """A ctx chunk payload: u32 length of the zlib-compressed record directory, the directory, the coded ids."""
    packed = zlib.compress(directory, 9)
    return struct.pack("<I", len(packed)) + packed + coded


def split_payload(payload: bytes | memoryview, directory_length: int) -> tuple[bytes, memoryview]:
    """(the record directory, exactly ``directory_length`` bytes; the coded ids) of a ctx payload, or CoderError."""
    view = memoryview(payload)
    if len(view) < 4:
        raise CoderError("payload shorter than its directory length")
    (size,) = struct.unpack_from("<I", view)
    if 4 + size > len(view):
        raise CoderError("record directory runs past the payload")
    d = zlib.decompressobj()
    try:
        directory = d.decompress(view[4 : 4 + size], directory_length)
    except zlib.error as err:
        raise CoderError(f"record directory does not decompress ({err})") from None
    if not d.eof or d.unconsumed_tail or d.unused_data or len(directory) != directory_length:
        raise CoderError("record directory decompresses to the wrong length")
    return directory, view[4 + size :]
