"""tools/compare_architectures.py: cost figures of real presets, and refusal of a run trained on another budget."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provq.train.checkpoint import default_checkpoint

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_architectures.py"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, check=False)


def test_untrained_costs_of_the_conv_and_haar_stems(tmp_path: Path) -> None:
    quick = ["--sizes", "64x64,96x64", "--runs", "2", "--warmup", "1", "--step-runs", "1", "--batch-size", "2"]
    done = run_tool("--untrained", "--presets", "tiny-conv,tiny-haar", "--out", str(tmp_path), *quick, "--crop", "32")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "comparison.json").read_text())
    rows = {r["preset"]: r for r in report["rows"]}
    assert rows["tiny-conv"]["gmac_per_megapixel"]["total"] == pytest.approx(161.9, abs=0.05)
    assert rows["tiny-haar"]["gmac_per_megapixel"]["total"] == pytest.approx(63.9, abs=0.05)
    assert rows["tiny-conv"]["parameters"] == 2_000_267 and rows["tiny-haar"]["stem"] == "haar"
    for row in rows.values():
        assert set(row["latency_ms"]) == {"64x64", "96x64"} and min(row["latency_ms"].values()) > 0
        assert row["train_step_s"] > 0 and row["psnr_db"] is None
    table = (tmp_path / "comparison.md").read_text()
    assert "| tiny-haar | haar p4 | 2.85 M | 29.4 | 34.6 | 63.9 |" in table
    assert (tmp_path / "untrained" / "tiny-haar" / "encoder.onnx").is_file()


def test_a_reused_run_from_another_budget_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "tiny"
    run.mkdir()
    shutil.copy(default_checkpoint(), run / "last.pt")  # trained for 4000 steps, not this comparison's 20
    done = run_tool("--data", "sample", "--steps", "20", "--presets", "tiny", "--out", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "choose another --out" in lines[0] and "Traceback" not in done.stderr
    assert not (run / "model").exists()
    done = run_tool("--presets", "tiny,huge", "--untrained", "--out", str(tmp_path))
    assert done.returncode == 2 and "unknown preset(s) ['huge']" in done.stderr
