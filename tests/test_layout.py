"""The asked-for layout: four stage folders installed as provq.*, and a runtime that never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("module", "folder"), [("train", "train"), ("calibration", "calibration"),
                                                ("export", "export"), ("edge_runtime", "edge_runtime")])  # fmt: skip
def test_stage_folders_import_as_provq_packages(module: str, folder: str) -> None:
    code = f"import provq.{module} as m, pathlib; print(pathlib.Path(m.__file__).resolve().parent)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert Path(done.stdout.strip()) == ROOT / folder


def test_edge_runtime_imports_with_torch_blocked() -> None:
    code = "import sys; sys.modules['torch'] = None; import provq.edge_runtime; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_shipped_sample_data_is_small_and_attributed() -> None:
    from provq.train.data import sample_dir

    folder = sample_dir()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4 * 2**20
    attribution = (folder / "ATTRIBUTION.md").read_text()
    for p in files:
        if p.name != "ATTRIBUTION.md":
            assert p.name in attribution, f"{p.name} is not attributed"
    assert (folder / "clip.mp4").is_file() and len(list((folder / "images").glob("*.jpg"))) >= 8
