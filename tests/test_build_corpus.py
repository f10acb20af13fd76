"""tools/build_corpus.py on two shipped photos (in place of the Debian packages it fetches): the layout it writes,
WebDataset shards that the training data path reads back, and a corpus replaced only by a complete build."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import pytest

from provq.edge_runtime.manifest import default_model_dir
from provq.train.file_index import Frames, index_source

TOOLS = Path(__file__).resolve().parents[1] / "tools"
PHOTOS = default_model_dir().parent / "sample" / "images"


@pytest.fixture
def build_corpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import build_corpus
    from corpus_fetch import Source

    def photo(name: str) -> Source:
        frames = lambda: iter([(-1, cv2.imread(str(PHOTOS / f"{name}.jpg")))])  # noqa: E731
        return Source(f"sample/{name}", "sample", name, "CC0", "test", "a shipped sample photo", frames)

    sources = [photo("astronaut"), photo("chelsea")]
    monkeypatch.setattr(build_corpus, "collect_sources", lambda cache, frame_step: (sources, {"sample": {}}))
    yield build_corpus
    sys.modules.pop("build_corpus", None)


def _build(build_corpus, out: Path, *extra: str) -> dict:
    return build_corpus.build(build_corpus.parse_args(["--out", str(out), "--crop", "128", "--scales", "2", *extra]))


def test_a_corpus_is_written_whole_and_replaced_only_by_a_complete_build(
    build_corpus, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "corpus"
    summary = _build(build_corpus, out)
    crops = summary["splits"]["train"]["crops"] + summary["splits"]["val"]["crops"]
    assert crops > 0 and summary["splits"]["val"]["crops"] > 0  # one photo of the two held out
    assert len(list((out / "images").rglob("*.jpg"))) == crops and (out / "shards" / "train-000000.tar").is_file()
    assert json.loads((out / "corpus.json").read_text()) == summary
    # The shards hold the same crops as the image folder, and the training data path decodes every one of them.
    decoded = []
    for split in ("train", "val"):
        index = index_source(str(out / "shards" / f"{split}-000000.tar"), cache_dir=tmp_path_factory.mktemp("index"))
        frames = Frames(index, max_video_frames=1)
        decoded += [frames.decode(0, i) for i in range(int(frames.per_file()[0]))]
    assert len(decoded) == crops and all(d is not None and d.shape == (128, 128, 3) for d in decoded)
    before = (out / "corpus.json").read_bytes()

    def broken_shards(*args: object) -> list[str]:
        raise build_corpus.CorpusError("disk full")

    write_shards = build_corpus.write_shards
    monkeypatch.setattr(build_corpus, "write_shards", broken_shards)
    with pytest.raises(build_corpus.CorpusError, match="disk full"):
        _build(build_corpus, out, "--quality", "50")
    assert (out / "corpus.json").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["corpus"]
    monkeypatch.setattr(build_corpus, "write_shards", write_shards)
    smaller = _build(build_corpus, out, "--quality", "50")
    assert json.loads((out / "corpus.json").read_text()) == smaller and smaller["config"]["quality"] == 50
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no staging folder, no old corpus left


def test_a_folder_that_is_not_a_corpus_is_not_replaced(build_corpus, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(build_corpus.CorpusError, match="refusing to replace"):
        _build(build_corpus, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
