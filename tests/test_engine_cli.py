"""``provq-export engine``: building both parts, one-line user errors, missing tensorrt or cuda-python, and lazy
imports (the engine modules import without torch, tensorrt or cuda). Uses the FAKE TensorRT of tests/fake_tensorrt.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fake_tensorrt import FakeState

from provq.export.engine_cli import engine_main

TESTS = Path(__file__).resolve().parent


def test_cli_builds_both_parts(fake: FakeState, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_main([str(model), "--precision", "int8", "--max-shape", "2x3x256x256", "--workspace", "64"]) == 0
    out = capsys.readouterr().out
    assert out.count("trtexec --onnx=") == 2 and len(fake.builds) == 2
    assert "encoder.int8.b2x256x256" in out and "decoder.int8.b2x256x256" in out and "next: provq-run" in out
    assert engine_main([str(model), "--precision", "int8", "--max-shape", "2x3x256x256", "--workspace", "64"]) == 0
    assert len(fake.builds) == 2 and capsys.readouterr().out.count("reusing") == 2


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        ("--precision int8 --part encoder --min-shape 1x3x256x256 --max-shape 4x3x256x256 --dla 0",
         "DLA needs static shapes"),
        ("--precision int8 --opt-shape 1x3x250x256", "multiples of the model's downsample 8"),
        ("--precision fp32 --opt-shape big", "not like 1x3x256x256"),
    ],
)  # fmt: skip
def test_cli_user_errors(
    fake: FakeState, model: Path, capsys: pytest.CaptureFixture[str], args: str, phrase: str
) -> None:
    assert engine_main([str(model), *args.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("provq-export engine: error: ") and phrase in err
    assert fake.builds == []


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def _assert_cli_error(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("provq-export engine: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_missing_tensorrt_prints_the_trtexec_command(model: Path) -> None:
    done = _python(
        "import sys; sys.modules['tensorrt'] = None\n"
        "from provq.export.engine_cli import engine_main\n"
        f"sys.exit(engine_main([{str(model)!r}, '--precision', 'int8']))\n"
    )
    line = _assert_cli_error(
        done,
        "tensorrt is not installed: on a Jetson use JetPack's python3-libnvinfer (create the venv with "
        "--system-site-packages); the equivalent trtexec command is: trtexec --onnx=",
        "encoder.int8.onnx",
        "&& trtexec --onnx=",
        "decoder.int8.onnx --saveEngine=",
        "--stronglyTyped",
    )
    assert line.count("trtexec --onnx=") == 2


def test_missing_cuda_python_exits_2(model: Path) -> None:
    done = _python(
        f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
        "import fake_tensorrt; fake_tensorrt.install('10.3.0', cuda_layout='none')\n"
        "from provq.export.engine_cli import engine_main\n"
        f"sys.exit(engine_main([{str(model)!r}, '--precision', 'fp32', '--part', 'encoder']))\n"
    )
    _assert_cli_error(done, "cuda-python is not installed: pip install 'provq[edge]' (or use --backend onnxruntime)")


def test_engine_modules_import_without_torch() -> None:
    done = _python(
        "import sys; sys.modules['torch'] = None\n"
        "import provq.export.engine, provq.export.engine_cli, provq.edge_runtime.trt_runner\n"
        "import provq.edge_runtime.engine_meta, provq.edge_runtime.cuda_shim\n"
        "assert 'tensorrt' not in sys.modules and 'cuda' not in sys.modules, 'imports must be lazy'\n"
    )
    assert done.returncode == 0, done.stderr
