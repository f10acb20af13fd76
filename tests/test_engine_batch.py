"""The batch dimension of engines (several cameras per call): the default profile of 1 to 4 frames, ``--max-batch``
and the runtime splitting larger batches, static batches on DLA. Uses the FAKE TensorRT of tests/fake_tensorrt.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from engine_helpers import B1, B4, DS, one_line
from fake_tensorrt import FakeState, fake_encode

from provq.edge_runtime.backends import TensorRTBackend
from provq.edge_runtime.cameras import CameraPipeline
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.manifest import load_manifest
from provq.edge_runtime.preprocess import prepare
from provq.edge_runtime.sources import open_source
from provq.edge_runtime.stream_state import PipelineConfig
from provq.edge_runtime.tokenstream import TokenStreamReader
from provq.export.engine import build_engine, make_request
from provq.export.engine_cli import engine_main


def test_default_profile_batches_one_to_four_frames(fake: FakeState, model: Path) -> None:
    encoder = build_engine(model, "encoder", "int8")
    decoder = build_engine(model, "decoder", "int8")
    assert ".encoder.int8.b1-4x256x256." in encoder.name and ".decoder.int8.b1-4x256x256." in decoder.name
    assert fake.builds[0]["profiles"] == [{"images": (B1, B4, B4)}]  # tuned for the largest batch
    assert fake.builds[1]["profiles"] == [{"ids": ((1, 32, 32), (4, 32, 32), (4, 32, 32))}]


def test_max_batch_sets_the_profile_and_the_runtime_splits_larger_batches(
    fake: FakeState, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(model), "--precision", "int8", "--opt-shape", "1x3x64x96", "--max-batch", "2", "--workspace", "64"]
    assert engine_main(args) == 0
    out = capsys.readouterr().out
    assert "--minShapes=images:1x3x64x96 --optShapes=images:2x3x64x96 --maxShapes=images:2x3x64x96" in out
    assert "--minShapes=ids:1x8x12 --optShapes=ids:2x8x12 --maxShapes=ids:2x8x12" in out
    assert [b["profiles"] for b in fake.builds] == [
        [{"images": ((1, 3, 64, 96), (2, 3, 64, 96), (2, 3, 64, 96))}],
        [{"ids": ((1, 8, 12), (2, 8, 12), (2, 8, 12))}],
    ]
    backend = TensorRTBackend(load_manifest(model), "int8")
    try:
        assert backend.max_batch == 2
        with pytest.raises(EdgeError, match=r"encoder input 3x3x64x96 is outside the engine's profile") as err:
            backend.encode(np.zeros((3, 3, 64, 96), np.float32))
        one_line(err)
        folders = []
        for i in range(3):  # three cameras of 96 x 64 frames, four frames each
            folder = tmp_path / f"cam{i}"
            folder.mkdir()
            for k in range(4):
                cv2.imwrite(str(folder / f"{k}.png"), np.full((64, 96, 3), 40 * i + 10 * k, np.uint8))
            folders.append(folder)
        sources = [open_source(str(f)) for f in folders]
        configs = [PipelineConfig(tokens=tmp_path / f"{i}.ptok", codec="zlib") for i in range(3)]  # no codebook here
        before = fake.executions
        report = CameraPipeline(sources, backend, configs).run()
    finally:
        backend.close()
    assert report.calls == 4 * 2 and fake.executions - before == 4 * 2  # each round of 3 frames: calls of 2 + 1
    for i in range(3):
        with TokenStreamReader(tmp_path / f"{i}.ptok") as reader:
            ids = [frame.ids for frame in reader.frames()]
        expected = [fake_encode(prepare(cv2.imread(str(folders[i] / f"{k}.png")), DS, "pad")[0], DS)[0]
                    for k in range(4)]  # fmt: skip
        assert len(ids) == 4 and all(np.array_equal(a, b) for a, b in zip(ids, expected, strict=True))


def test_max_batch_on_dla_is_static(fake: FakeState, model: Path) -> None:
    build_engine(model, "encoder", "int8", opt_shape=B1, max_batch=2, dla_core=0)
    assert fake.builds[0]["profiles"] == [{"images": ((2, 3, 256, 256),) * 3}]
    with pytest.raises(EdgeError, match="--max-batch must be at least 1"):
        make_request(model, "encoder", "int8", max_batch=0)
