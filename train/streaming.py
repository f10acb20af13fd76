"""Training crops streamed from a file index by DataLoader workers, in an order fixed by (seed, rank, step).

Samples: each image is one sample, each tar-shard key one, each video ``min(frames, max_video_frames)`` frames spread
evenly over it (decoded on the fly by seeking). Samples are numbered in index order (files sorted by path, shards in
the given order and their keys in tar order).

Validation (held out unless ``--val`` names its own source): every k-th still image (images and shard samples,
counted in sample order, starting at k // 2) with k = max(round(1 / val_fraction), ceil(stills / val_frames)), and
the last ``val_fraction`` of each video's sampled frames, after a gap as long as that tail so that neighbouring
frames do not leak. The rule depends on the index alone, not on workers or ranks. At most ``val_frames`` of the held-
out frames (spread evenly) are decoded, once, and kept as centre crops of at most ``val_size`` px.

Order, for rank r of W processes:
    * rank r owns the training samples r, r + W, r + 2W, ... (its shard): the shards are disjoint and cover them all;
    * its stream is epoch after epoch of its shard, each epoch permuted by numpy's PCG64 seeded (seed, rank, stream,
      epoch); slot b of step s is position s * batch + b of that stream, so epochs may end inside a batch and a run
      resumed at any step reads what the uninterrupted run reads;
    * the crop, the flip and the replacement of a file that fails to decode come from a generator seeded (seed, rank,
      stream, step, b) in whichever worker decodes it, so batches do not depend on ``--workers``.
``stream`` 0 is training, 1 the k-means initialisation.

Unreadable files: a sample that does not decode is replaced by another sample of the shard drawn from that slot's
generator (up to ``MAX_ATTEMPTS`` tries), counted, and summarised in one line. A run stops with a ProvqError once more
than ``max_bad_fraction`` of at least 100 decode attempts failed, or when a slot finds no decodable file.

Memory: the index and two int32 arrays per sample (a few tens of MB per million samples), one epoch permutation (8
bytes per sample of the shard), one byte per shard sample recording which were read, the validation crops and the
batches in flight (2 per worker). Nothing is cached per frame.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import os
import signal
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from .data import center_crop, random_crop, to_tensor
from .errors import ProvqError
from .file_index import VIDEO, Frames, index_source

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 16  # decode tries per batch slot before the run stops
MIN_ATTEMPTS_FOR_FRACTION = 100  # the bad-file fraction is judged after this many decode attempts


def default_workers() -> int:
    """DataLoader workers per process: the CPUs this process may use, shared among local ranks, less one; 1..8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cpus // local - 1))


def source_frames(source: str, *, max_video_frames: int = 300) -> list[np.ndarray]:
    """Every decodable frame of a source (RGB uint8 H x W x 3, index order), in memory: for small evaluation sets."""
    frames = Frames(index_source(source), max_video_frames)
    files, positions = _numbered(frames.per_file())
    decoded = (frames.decode(f, p) for f, p in zip(files.tolist(), positions.tolist(), strict=True))
    return [f for f in decoded if f is not None]


@dataclass(frozen=True)
class Split:
    """Sample numbers (int64, index order) for training and for validation (already capped)."""

    train: np.ndarray
    val: np.ndarray


def _numbered(per_file: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file, position) of every sample, int32 each, in index order."""
    files = np.repeat(np.arange(len(per_file), dtype=np.int32), per_file)
    starts = np.repeat(np.cumsum(per_file) - per_file, per_file)
    return files, (np.arange(len(files), dtype=np.int64) - starts).astype(np.int32)


def _spread(samples: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` entries of ``samples``, evenly spaced."""
    return samples if len(samples) <= cap else samples[np.arange(cap, dtype=np.int64) * len(samples) // cap]


def hold_out(kinds: np.ndarray, per_sample: np.ndarray, positions: np.ndarray, fraction: float, cap: int) -> Split:
    """The automatic training/validation split of one source (see the module docstring).

    ``kinds``, ``per_sample`` (samples of the sample's file) and ``positions`` are given per sample.
    """
    video = kinds == VIDEO
    stills = np.flatnonzero(~video)
    every = max(2, round(1.0 / fraction), math.ceil(len(stills) / cap))
    held = stills[every // 2 :: every]
    if not len(held) and len(stills) > 1:
        held = stills[len(stills) // 2 : len(stills) // 2 + 1]
    n = per_sample[video]
    tail = np.maximum(1, np.rint(n * fraction)).astype(np.int64)
    gap = np.maximum(0, np.minimum(tail, n - tail - 1))
    if np.any(n - tail - gap < 1):
        raise ProvqError("a video is too short to split into training and validation frames; pass --val")
    pos = positions[video]
    video_ids = np.flatnonzero(video)
    is_val = np.zeros(len(kinds), dtype=bool)
    is_val[held] = True
    is_val[video_ids[pos >= n - tail]] = True
    in_gap = np.zeros(len(kinds), dtype=bool)
    in_gap[video_ids[(pos >= n - tail - gap) & (pos < n - tail)]] = True
    return Split(train=np.flatnonzero(~is_val & ~in_gap), val=_spread(np.flatnonzero(is_val), cap))


class Item(NamedTuple):
    """One decoded slot: a crop x crop x 3 uint8 crop (None if no file decoded) and what it took."""

    crop: np.ndarray | None  # None once collated
    decoded: bool  # False: no file decoded in MAX_ATTEMPTS tries
    position: int  # the shard position it came from, after any replacement
    failures: int  # decode attempts that failed first
    bad: str | None  # the last file that failed
    upscaled: bool  # the frame was smaller than the crop


@dataclass
class Batch:
    """A collated batch: ``frames`` B x 3 x crop x crop float32 in [-1, 1] (the model's input) and what its decoding
    met."""

    frames: torch.Tensor
    items: list[Item]

    def pin_memory(self) -> Batch:
        self.frames = self.frames.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    """Stack the crops (zeros where a slot found nothing: the run stops on that batch) and convert them to the model's
    input (``data.to_tensor``, in the worker that decoded them); drop them from the items."""
    shape = next((it.crop.shape for it in items if it.crop is not None), (1, 1, 3))
    frames = np.stack([it.crop if it.crop is not None else np.zeros(shape, np.uint8) for it in items])
    return Batch(to_tensor(frames), [it._replace(crop=None) for it in items])


@dataclass(eq=False)  # eq=False: compared and hashed by identity, like any Dataset
class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset of one rank's shard: item (stream, step, slot, position) -> Item.

    ``files`` and ``positions`` (int32) name the shard's samples; the crop, the flip and replacements are drawn from
    numpy's PCG64 seeded (seed, rank, stream, step, slot).
    """

    frames: Frames
    files: np.ndarray
    positions: np.ndarray
    _: KW_ONLY
    crop: int  # crops are crop x crop
    seed: int
    rank: int

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int, int, int]) -> Item:
        stream, step, slot, position = item
        rng = np.random.default_rng([self.seed, self.rank, stream, step, slot])
        bad = None
        for attempt in range(MAX_ATTEMPTS):
            file, pos = int(self.files[position]), int(self.positions[position])
            frame = self.frames.decode(file, pos)
            if frame is not None:
                patch, upscaled = random_crop(frame, self.crop, rng)
                return Item(np.ascontiguousarray(patch), True, position, attempt, bad, upscaled)
            bad = self.frames.describe(file, pos)
            position = int(rng.integers(len(self.files)))
        return Item(None, False, position, MAX_ATTEMPTS, bad, False)


class ShardOrder:
    """Position ``g`` of a rank's sample stream -> position in its shard: epoch g // n permuted, seeded."""

    def __init__(self, size: int, *, seed: int, rank: int, stream: int) -> None:
        self.size = size
        self.key = (seed, rank, stream)
        self.epochs: OrderedDict[int, np.ndarray] = OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self.epochs:
            self.epochs[epoch] = np.random.default_rng([*self.key, epoch]).permutation(self.size)
            if len(self.epochs) > 2:  # a batch no larger than the shard spans at most two epochs
                self.epochs.popitem(last=False)
        return self.epochs[epoch]

    def positions(self, start: int, count: int) -> np.ndarray:
        g = np.arange(start, start + count, dtype=np.int64)
        return np.array([self.permutation(int(e))[int(o)] for e, o in zip(g // self.size, g % self.size, strict=True)])


class StepSampler(torch.utils.data.Sampler):
    """Batch sampler: for each step from ``start`` (to ``stop``, or forever) the items of its slots."""

    def __init__(self, order: ShardOrder, *, stream: int, batch_size: int, start: int, stop: int | None) -> None:
        self.order, self.stream, self.batch_size, self.start, self.stop = order, stream, batch_size, start, stop

    def items(self, step: int) -> list[tuple[int, int, int, int]]:
        positions = self.order.positions(step * self.batch_size, self.batch_size)
        return [(self.stream, step, slot, int(p)) for slot, p in enumerate(positions)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        step = self.start
        while self.stop is None or step < self.stop:
            yield self.items(step)
            step += 1


def _worker_init(_worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the trainer checkpoints and stops, the workers must not die first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class DataCounts:
    """What this process's reading met so far."""

    attempts: int = 0  # decode attempts (successful ones plus failures)
    failures: int = 0
    upscaled: int = 0
    bad: str | None = None  # one file that failed


class TrainingData:
    """The training stream of one rank and the validation frames, built from ``--data`` (and ``--val``).

    ``batch(step, B)`` and ``batches(start, B)`` give the same B x 3 x crop x crop float32 batches in [-1, 1]; the
    first decodes in this process, the second through a DataLoader with ``workers`` processes.
    """

    def __init__(
        self,
        data: str,
        val: str | None = None,
        *,
        crop: int,
        multiple: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int | None = None,
        val_size: int = 256,
        val_fraction: float = 0.15,
        val_frames: int = 256,
        max_video_frames: int = 300,
        max_bad_fraction: float = 0.1,
        cache_dir: Path | None = None,
        reindex: bool = False,
    ) -> None:
        if val_frames < 1 or max_video_frames < 1 or not 0.0 < val_fraction < 1.0 or not 0.0 <= max_bad_fraction < 1:
            raise ProvqError(
                "--val-frames and --max-video-frames must be positive, the validation fraction in (0, 1) and --max-"
                f"bad-fraction in [0, 1), got {val_frames}, {max_video_frames}, {val_fraction}, {max_bad_fraction}"
            )
        self.crop, self.seed, self.rank, self.world_size = crop, seed, rank, world_size
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise ProvqError(f"--workers must be 0 (read in the training process) or more, got {self.workers}")
        self.max_bad_fraction = max_bad_fraction
        self.frames = self._frames(data, max_video_frames, cache_dir, reindex)
        files, positions = _numbered(self.frames.per_file())
        if val is None:
            kinds = self.frames.index.kinds[files]
            per_sample = self.frames.per_file()[files]
            split = hold_out(kinds, per_sample, positions, val_fraction, val_frames)
            val_source = self.frames
            val_files, val_positions = files[split.val], positions[split.val]
            train = split.train
            if not len(train) or not len(split.val):
                raise ProvqError(
                    "need at least 2 images (one is held out for validation) or a video; or pass --val DIR"
                )
        else:
            val_source = self._frames(val, max_video_frames, cache_dir, reindex)
            val_files, val_positions = _numbered(val_source.per_file())
            keep = _spread(np.arange(len(val_files)), val_frames)
            val_files, val_positions = val_files[keep], val_positions[keep]
            train = np.arange(len(files))
        self.train_samples = len(train)
        shard = train[rank::world_size]
        if not len(shard):
            raise ProvqError(f"{world_size} processes but only {len(train)} training samples: use fewer processes")
        self.dataset = CropDataset(self.frames, files[shard], positions[shard], crop=crop, seed=seed, rank=rank)
        self.val_frames = self._decode_val(val_source, val_files, val_positions, val_size, multiple)
        self.counts = DataCounts()
        self.error: str | None = None  # set when the run must stop on unreadable data
        self.read = np.zeros(len(shard), dtype=bool)  # shard samples read by training (stream 0)
        self.orders: dict[int, ShardOrder] = {}

    @staticmethod
    def _frames(source: str, max_video_frames: int, cache_dir: Path | None, reindex: bool) -> Frames:
        frames = Frames(index_source(source, cache_dir=cache_dir, reindex=reindex), max_video_frames)
        if not frames.per_file().sum():
            index = frames.index
            if len(index) == 1 and index.kinds[0] == VIDEO:
                raise ProvqError(
                    f"could not decode any frame of {index.path(0)}: is the video corrupt or its codec unsupported?"
                )
            raise ProvqError(
                f"none of the {len(index)} files of {source} open (e.g. {index.path(0)}): are they corrupt?"
            )
        unreadable = np.flatnonzero(frames.index.counts == 0)
        if len(unreadable):
            log.warning(
                "%s: %d file(s) do not open, e.g. %s", source, len(unreadable), frames.index.path(unreadable[0])
            )
        return frames

    @staticmethod
    def _decode_val(
        frames: Frames, files: np.ndarray, positions: np.ndarray, size: int, multiple: int
    ) -> list[np.ndarray]:
        """Validation centre crops (RGB uint8, side at most ``size``, a multiple of ``multiple``), decoded once."""
        out, bad = [], []
        for file, pos in zip(files.tolist(), positions.tolist(), strict=True):
            frame = frames.decode(file, pos)
            if frame is None:
                bad.append(frames.describe(file, pos))
            else:
                out.append(center_crop(frame, size, multiple).copy())
        if not out:
            raise ProvqError(
                f"none of the {len(bad)} validation frames could be decoded (e.g. {bad[0]}): are they corrupt?"
            )
        if bad:
            log.warning("skipped %d unreadable validation frame(s), e.g. %s", len(bad), bad[0])
        return out

    @property
    def shard_size(self) -> int:
        return len(self.dataset)

    def order(self, stream: int) -> ShardOrder:
        if stream not in self.orders:
            self.orders[stream] = ShardOrder(self.shard_size, seed=self.seed, rank=self.rank, stream=stream)
        return self.orders[stream]

    def _sampler(self, stream: int, batch_size: int, start: int, stop: int | None) -> StepSampler:
        return StepSampler(self.order(stream), stream=stream, batch_size=batch_size, start=start, stop=stop)

    def _account(self, batch: Batch, stream: int) -> torch.Tensor:
        """Count what the batch met, set ``error`` past the thresholds, return its frames."""
        c = self.counts
        for item in batch.items:
            c.attempts += item.failures + item.decoded
            c.failures += item.failures
            c.upscaled += item.upscaled
            c.bad = item.bad or c.bad
            if stream == 0 and item.decoded:
                self.read[item.position] = True
        if not all(item.decoded for item in batch.items):
            self.error = f"{MAX_ATTEMPTS} files in a row could not be decoded (e.g. {c.bad}): are they corrupt?"
        elif c.attempts >= MIN_ATTEMPTS_FOR_FRACTION and c.failures > self.max_bad_fraction * c.attempts:
            self.error = (
                f"{c.failures} of {c.attempts} file reads did not decode (more than --max-bad-fraction "
                f"{self.max_bad_fraction}), e.g. {c.bad}: remove the broken files or raise --max-bad-fraction"
            )
        return batch.frames

    def batch(self, step: int, batch_size: int, stream: int = 0) -> torch.Tensor:
        """The batch of ``step``, decoded in this process: B x 3 x crop x crop float32 in [-1, 1]."""
        items = self._sampler(stream, batch_size, step, step + 1).items(step)
        return self._account(collate([self.dataset[i] for i in items]), stream)

    def batches(
        self,
        start: int,
        batch_size: int,
        *,
        stream: int = 0,
        stop: int | None = None,
        device: torch.device | None = None,
    ) -> Iterator[torch.Tensor]:
        """Batches of steps start, start + 1, ... (to ``stop`` or forever) through a DataLoader, on ``device``.

        Workers prefetch two batches each; on CUDA the batches are pinned and copied asynchronously.
        """
        device = torch.device("cpu") if device is None else device
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self._sampler(stream, batch_size, start, stop),
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            multiprocessing_context=self._context(),
            worker_init_fn=_worker_init if self.workers else None,
        )
        iterator = iter(loader)
        try:
            for batch in iterator:
                frames = self._account(batch, stream)
                yield frames.to(device, non_blocking=True)
        finally:
            del iterator  # stops the workers

    def _context(self) -> Any:
        """Fork where there is fork: the workers share the index pages instead of unpickling a copy each.

        OpenCV is set to run sequentially first: the workers are the parallelism (one decode each), and a forked
        child then never depends on a thread pool started in the parent, whose threads it does not inherit.
        """
        if self.workers and "fork" in multiprocessing.get_all_start_methods():
            cv2.setNumThreads(0)
            return multiprocessing.get_context("fork")
        return None

    def summary(self) -> str | None:
        """One line on skipped and upscaled files, or None when there were none."""
        c = self.counts
        if not c.failures and not c.upscaled:
            return None
        parts = []
        if c.failures:
            parts.append(f"skipped {c.failures} unreadable file read(s) of {c.attempts} (e.g. {c.bad})")
        if c.upscaled:
            parts.append(f"upscaled {c.upscaled} frame(s) smaller than --crop {self.crop}")
        return "data: " + "; ".join(parts)

    def report(self) -> dict[str, Any]:
        """What this rank read: counts, and the training-sample numbers it read (digest and the first 1000)."""
        ids = self.rank + self.world_size * np.flatnonzero(self.read).astype(np.int64)
        return {
            "rank": self.rank,
            "shard_samples": self.shard_size,
            "train_samples": self.train_samples,
            "distinct_read": len(ids),
            "read_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
            "read_first": ids[:1000].tolist(),
            "decode_attempts": self.counts.attempts,
            "decode_failures": self.counts.failures,
            "upscaled": self.counts.upscaled,
        }
