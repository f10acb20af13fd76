"""The wheel that `pip install .` builds carries every module of the four stages, subpackages included (an editable
install, which the test suite itself runs from, would not notice a missing one)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"train": "provq/train", "calibration": "provq/calibration", "export": "provq/export",
          "edge_runtime": "provq/edge_runtime"}  # fmt: skip


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_every_stage(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("provq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, package in STAGES.items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected - names == set()
    assert "provq/edge_runtime/formats/errors.py" in names and "provq/edge_runtime/assets/model/manifest.json" in names


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run's command is the README's test command, character for character, and it sets PROVQ_CI=1 so that live
    tests fail rather than skip when their Debian packages are missing."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0].strip() for block in readme.split("```bash\n")[1:]]
    (command,) = [block for block in blocks if "python -m pytest" in block and "apt-get install" in block]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == command and "PROVQ_CI=1 " in command
