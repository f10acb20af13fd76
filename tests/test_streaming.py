"""Streamed training data on real photos and the shipped clip: file index and its cache, hold-out, per-rank shards,
deterministic order, DataLoader workers, tar shards, unreadable files and small frames."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from provq.train import file_index
from provq.train.data import read_video_frame, sample_dir
from provq.train.errors import ProvqError
from provq.train.file_index import index_source
from provq.train.streaming import TrainingData


def _data(source: str | Path, tmp_path: Path, **kw: object) -> TrainingData:
    options = {"crop": 32, "multiple": 8, "seed": 0, "workers": 0, "val_size": 64, "cache_dir": tmp_path / "cache"}
    return TrainingData(str(source), **{**options, **kw})


def test_video_frames_decoded_by_seeking_equal_a_sequential_decode() -> None:
    clip = sample_dir() / "clip.mp4"
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while (read := capture.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    capture.release()
    for i in (0, 1, 13, 41, len(frames) - 1):
        assert np.array_equal(read_video_frame(clip, i), frames[i]), i
    assert read_video_frame(clip, len(frames) + 5) is None


def test_hold_out_is_disjoint_and_follows_the_rules(tmp_path: Path) -> None:
    data = _data("sample", tmp_path)  # 9 photos and an 80-frame clip
    # photos: index 3 of 9 (every 7th from 3) held out; clip: last 12 frames held out after a 12-frame gap
    assert data.train_samples == 8 + 56 and len(data.val_frames) == 1 + 12
    index = data.frames.index
    train = {(int(f), int(p)) for f, p in zip(data.dataset.files, data.dataset.positions, strict=True)}
    clip = next(i for i in range(len(index)) if index.path(i).endswith("clip.mp4"))
    assert {p for f, p in train if f == clip} == set(range(56))
    photos = sorted(f for f, _ in train if f != clip)
    stills = [i for i in range(len(index)) if i != clip]
    assert photos == stills[:3] + stills[4:]  # the 4th photo is held out
    capped = _data("sample", tmp_path, val_frames=5)
    assert len(capped.val_frames) == 5 and capped.train_samples == data.train_samples


def test_many_images_hold_out_at_most_val_frames(photo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        shutil.copy(sorted(photo_dir.glob("*.png"))[i % 9], folder / f"{i:03d}.png")
    data = _data(folder, tmp_path, val_frames=4)
    assert len(data.val_frames) == 4 and data.train_samples == 36  # every 10th image, not every 7th


def test_ranks_read_disjoint_shards_in_a_pure_function_of_seed_rank_and_step(photo_dir: Path, tmp_path: Path) -> None:
    ranks = [_data(photo_dir, tmp_path, rank=r, world_size=3) for r in range(3)]
    sizes = [r.shard_size for r in ranks]
    assert sum(sizes) == ranks[0].train_samples == 8 and sizes == [3, 3, 2]
    for r in ranks:  # each rank's 2 steps of 4 cover its whole shard at least once
        for step in range(2):
            r.batch(step, 4)
    read = [set(r.report()["read_first"]) for r in ranks]
    assert [len(s) for s in read] == sizes
    assert not (read[0] & read[1] or read[0] & read[2] or read[1] & read[2]) and set.union(*read) == set(range(8))
    again = _data(photo_dir, tmp_path, rank=1, world_size=3)
    assert torch.equal(again.batch(5, 4), ranks[1].batch(5, 4))
    assert not torch.equal(again.batch(5, 4), ranks[0].batch(5, 4))
    other_seed = _data(photo_dir, tmp_path, rank=1, world_size=3, seed=1)
    assert not torch.equal(other_seed.batch(5, 4), ranks[1].batch(5, 4))


def test_every_epoch_visits_each_training_sample_once(photo_dir: Path, tmp_path: Path) -> None:
    data = _data(photo_dir, tmp_path)
    order = data.order(0)
    n = data.shard_size
    epochs = [order.positions(e * n, n) for e in range(3)]
    assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    assert np.array_equal(order.positions(n - 2, 5), np.concatenate([epochs[0][-2:], epochs[1][:3]]))


def test_worker_processes_give_the_in_process_batches(tmp_path: Path) -> None:
    data = _data("sample", tmp_path, workers=2)  # photos and frames of the clip, decoded by seeking
    streamed = list(data.batches(3, 6, stop=7))
    assert len(streamed) == 4 and streamed[0].shape == (6, 3, 32, 32) and streamed[0].dtype == torch.float32
    assert float(streamed[0].min()) >= -1.0 and float(streamed[0].max()) <= 1.0
    for step, x in zip(range(3, 7), streamed, strict=True):
        assert torch.equal(x, data.batch(step, 6)), step


def _write_shards(folder: Path, files: list[Path], out: Path, per_shard: int) -> str:
    """WebDataset shards of the files in the given order, each keyed by its path relative to folder."""
    out.mkdir()
    for s in range(0, len(files), per_shard):
        with tarfile.open(out / f"{s // per_shard:03d}.tar", "w") as tar:
            for f in files[s : s + per_shard]:
                payload = f.read_bytes()
                info = tarfile.TarInfo(f.relative_to(folder).as_posix())
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(out / f"{{000..{(len(files) - 1) // per_shard:03d}}}.tar")


def test_tar_shards_train_like_the_folder_of_the_same_images(photo_dir: Path, tmp_path: Path) -> None:
    folder = _data(photo_dir, tmp_path, crop=48)
    files = [photo_dir / folder.frames.index.relative_path(i) for i in range(len(folder.frames.index))]
    pattern = _write_shards(photo_dir, files, tmp_path / "shards", per_shard=4)  # 3 shards: 4 + 4 + 1 images
    shards = _data(pattern, tmp_path, crop=48, workers=2)
    assert shards.train_samples == folder.train_samples == 8
    assert all(np.array_equal(a, b) for a, b in zip(shards.val_frames, folder.val_frames, strict=True))
    streamed = list(shards.batches(0, 5, stop=4))
    for step, x in enumerate(streamed):
        assert torch.equal(x, folder.batch(step, 5)), step


def test_index_is_cached_and_rebuilt_when_the_folder_changes(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photo_dir, folder / "a")
    cache = tmp_path / "cache"
    first = index_source(str(folder), cache_dir=cache)
    assert len(first) == 9 and len(list(cache.glob("*.npz"))) == 1
    scans = []
    real_scan = file_index._scan
    monkeypatch.setattr(file_index, "_scan", lambda source: scans.append(source) or real_scan(source))
    cached = index_source(str(folder), cache_dir=cache)
    assert scans == [] and [cached.path(i) for i in range(9)] == [first.path(i) for i in range(9)]
    shutil.copy(folder / "a" / "astronaut.png", folder / "a" / "zz.png")  # changes the subfolder's mtime
    grown = index_source(str(folder), cache_dir=cache)
    assert len(scans) == 1 and len(grown) == 10 and grown.relative_path(9) == "a/zz.png"
    index_source(str(folder), cache_dir=cache, reindex=True)
    assert len(scans) == 2


def test_unwritable_cache_only_warns(photo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.INFO):
        index = index_source(str(photo_dir), cache_dir=blocker / "cache")
    assert len(index) == 9 and "not cached" in caplog.text


def _with_broken(photo_dir: Path, tmp_path: Path, broken: int) -> Path:
    folder = tmp_path / f"broken{broken}"
    shutil.copytree(photo_dir, folder)
    for i in range(broken):
        (folder / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def test_unreadable_files_are_replaced_deterministically_and_counted(photo_dir: Path, tmp_path: Path) -> None:
    folder = _with_broken(photo_dir, tmp_path, 2)  # 2 of 11 files; one of the 11 is held out
    data, again = _data(folder, tmp_path), _data(folder, tmp_path, workers=2)
    batches = [data.batch(step, 8) for step in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(batches, again.batches(0, 8, stop=4), strict=True))
    assert data.counts.failures == again.counts.failures > 0 and data.error is None
    assert data.counts.attempts == 32 + data.counts.failures
    assert data.summary().startswith(f"data: skipped {data.counts.failures} unreadable file read(s) of ")


def test_too_many_unreadable_files_stop_the_run(photo_dir: Path, tmp_path: Path) -> None:
    folder = _with_broken(photo_dir, tmp_path, 9)  # about half the training files
    data = _data(folder, tmp_path)
    for step in range(20):
        data.batch(step, 8)
        if data.error:
            break
    assert data.error is not None and "--max-bad-fraction 0.1" in data.error and data.counts.attempts >= 100
    tolerant = _data(folder, tmp_path, max_bad_fraction=0.9)
    for step in range(20):
        tolerant.batch(step, 8)
    assert tolerant.error is None


def test_a_folder_of_only_unreadable_training_files_stops(photo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG broken")
    val = tmp_path / "val"
    shutil.copytree(photo_dir, val)
    data = _data(folder, tmp_path, val=str(val))
    data.batch(0, 2)
    assert data.error is not None and "16 files in a row could not be decoded" in data.error


def test_frames_smaller_than_the_crop_are_upscaled_to_cover_it(photo_dir: Path, tmp_path: Path) -> None:
    data = _data(photo_dir, tmp_path, crop=128)  # 96 px photos
    x = data.batch(0, 4)
    assert x.shape == (4, 3, 128, 128) and data.counts.upscaled == 4
    assert data.summary() == "data: upscaled 4 frame(s) smaller than --crop 128"


def test_too_many_processes_for_the_samples(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ProvqError, match="only 8 training samples"):
        _data(photo_dir, tmp_path, rank=9, world_size=10)
