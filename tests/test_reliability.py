"""Bad input, hostile files and faults that the other test files leave out (docs/RELIABILITY.md: who proves what).

- every frame kind the runtime accepts (gray H x W and H x W x 1, BGRA, 16-bit) at tiny and odd sizes, for each fit,
  comes back at its own size, and what it cannot use is one line;
- a manifest cannot name a file outside its model directory;
- a damaged copy of the shipped model directory gives provq-run one line and exit 2, and the shipped files stay as
  they are;
- provq-run at the file size limit (a full disk) keeps every complete chunk;
- a checkpoint that carries a pickled payload is refused by provq-export without running it;
- the token stream reader, the manifest loader and the engine sidecar reader cannot evaluate, unpickle or import
  anything named by a file;
- tools/soak.py works on a short run."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from provq.edge_runtime import bitpack, engine_meta
from provq.edge_runtime import manifest as manifest_module
from provq.edge_runtime.backends import open_backend
from provq.edge_runtime.errors import EdgeError
from provq.edge_runtime.formats import manifest as manifest_schema
from provq.edge_runtime.manifest import Manifest, default_model_dir, load_manifest, sha256_file
from provq.edge_runtime.outputs import open_output
from provq.edge_runtime.pipeline import Pipeline, PipelineConfig
from provq.edge_runtime.preprocess import FITS, Geometry, from_model_output, prepare, restore, to_bgr_uint8
from provq.edge_runtime.run_cli import main as run_main
from provq.edge_runtime.source_uri import sample_clip
from provq.edge_runtime.sources import open_source
from provq.edge_runtime.tokenstream import Frame, TokenStreamReader
from provq.edge_runtime.tokenstream import layout as ptok_layout
from provq.edge_runtime.tokenstream import reader as ptok_reader

DS = 8  # the shipped model's downsample factor
PHOTO = sample_clip().parent / "images" / "chelsea.jpg"
SHIPPED = default_model_dir()
RUN_WITHOUT_TORCH = (
    "import sys; sys.modules['torch'] = None; from provq.edge_runtime.run_cli import main; sys.exit(main(sys.argv[1:]))"
)


def _one_line(err: pytest.ExceptionInfo[EdgeError], *phrases: str) -> str:
    text = str(err.value)
    assert text and "\n" not in text, text
    for phrase in phrases:
        assert phrase in text, text
    return text


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------ frames


def _photo(height: int, width: int) -> np.ndarray:
    """A real BGR photo resized to height x width (1 x 1 keeps its mean colour)."""
    image = cv2.imread(str(PHOTO))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _as_kind(bgr: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(the frame as a camera or file hands it over, the H x W x 3 uint8 BGR the model must see).

    16-bit frames are the 8-bit ones times 257 (0..255 -> 0..65535), so scaling them back is exact.
    """
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).reshape(bgr.shape[:2])
    gray3 = np.dstack([gray] * 3)
    alpha = np.full(bgr.shape[:2], 77, np.uint8)
    kinds = {
        "bgr": (bgr, bgr),
        "gray": (gray, gray3),
        "gray1": (gray[..., None], gray3),
        "bgra": (np.dstack([bgr, alpha]), bgr),
        "bgr16": (bgr.astype(np.uint16) * 257, bgr),
        "gray16": (gray.astype(np.uint16) * 257, gray3),
        "bgra16": (np.dstack([bgr, alpha]).astype(np.uint16) * 257, bgr),
    }
    return kinds[kind]


KINDS = ["bgr", "gray", "gray1", "bgra", "bgr16", "gray16", "bgra16"]  # see _as_kind
SIZES = [(1, 1), (5, 7), (9, 17), (90, 161)]  # (height, width): under one token, odd, barely one token, odd


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("kind", KINDS)
def test_every_frame_kind_and_size_comes_back_at_its_own_size(kind: str, size: tuple[int, int], fit: str) -> None:
    height, width = size
    frame, expected = _as_kind(_photo(height, width), kind)
    assert np.array_equal(to_bgr_uint8(frame), expected)
    if fit == "crop" and (height < DS or width < DS):
        with pytest.raises(EdgeError) as err:
            prepare(frame, DS, fit)
        _one_line(err, f"frame {width}x{height} is smaller than one 8x8 token", "--fit pad or resize")
        return
    images, geometry = prepare(frame, DS, fit)
    assert images.dtype == np.float32 and images.flags.c_contiguous
    assert images.shape == (1, 3, geometry.model_height, geometry.model_width)
    assert geometry.model_height % DS == 0 and geometry.model_width % DS == 0 and geometry.model_height >= DS
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert (geometry.height, geometry.width, geometry.fit) == (height, width, fit)
    model_bgr = from_model_output(images)[0]  # the model's input as an image: exact uint8 round trip
    back = restore(model_bgr, geometry)
    assert back.shape == (height, width, 3) and back.dtype == np.uint8
    if fit == "pad":
        assert np.array_equal(back, expected)  # padding is cut off again: every pixel is the input's
    elif fit == "crop":
        g = geometry
        inside = np.s_[g.top : g.top + g.model_height, g.left : g.left + g.model_width]
        assert np.array_equal(back[inside], expected[inside])
        assert np.array_equal(model_bgr, expected[inside])
    elif (height, width) == (geometry.model_height, geometry.model_width):
        assert np.array_equal(back, expected)


def test_16bit_frames_round_to_the_nearest_8bit_level() -> None:
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # each 16-bit value once, as a gray frame
    bgr = to_bgr_uint8(every)
    assert np.array_equal(bgr[..., 0], np.rint(every / 257.0).astype(np.uint8))  # 257 is odd: no ties
    assert (bgr[..., 0] == bgr[..., 1]).all() and (bgr[..., 1] == bgr[..., 2]).all()


def test_geometry_of_tiny_and_odd_frames() -> None:
    assert Geometry.plan(1, 1, DS, "pad") == Geometry(1, 1, 8, 8, "pad")
    assert Geometry.plan(5, 7, DS, "resize") == Geometry(5, 7, 8, 8, "resize")
    assert Geometry.plan(9, 17, DS, "crop") == Geometry(9, 17, 8, 16, "crop", 0, 0)
    assert Geometry.plan(90, 161, DS, "crop") == Geometry(90, 161, 88, 160, "crop", 1, 0)
    assert Geometry.plan(90, 161, DS, "resize") == Geometry(90, 161, 88, 160, "resize")


@pytest.mark.parametrize(
    ("frame", "phrase"),
    [
        (np.zeros((8, 8, 3), np.float32), "frames must be uint8 or uint16, got float32"),
        (np.zeros((8, 8, 3), np.int16), "frames must be uint8 or uint16, got int16"),
        (np.zeros((8, 8, 2), np.uint8), "unsupported frame shape (8, 8, 2)"),
        (np.zeros((8, 8, 5), np.uint8), "unsupported frame shape (8, 8, 5)"),
        (np.zeros((2, 8, 8, 3), np.uint8), "unsupported frame shape (2, 8, 8, 3)"),
        (np.zeros((0, 8, 3), np.uint8), "empty frame"),
        (np.zeros(0, np.uint8), "empty frame"),
        (None, "empty frame"),
    ],
    ids=["float32", "int16", "2-channel", "5-channel", "4-d", "0-rows", "empty", "none"],
)
def test_frames_the_runtime_cannot_use_are_one_line(frame: np.ndarray | None, phrase: str) -> None:
    with pytest.raises(EdgeError) as err:
        prepare(frame, DS, "pad")
    _one_line(err, phrase)


def test_unknown_fit_and_empty_geometry_are_one_line() -> None:
    with pytest.raises(EdgeError) as err:
        Geometry.plan(8, 8, DS, "stretch")
    _one_line(err, "unknown fit 'stretch'")
    with pytest.raises(EdgeError) as err:
        Geometry.plan(0, 8, DS, "pad")
    _one_line(err, "empty frame (0 x 8)")


def test_tiny_gray_bgra_and_16bit_frames_run_through_the_pipeline(tmp_path: Path) -> None:
    """A 7x5 folder of gray, BGRA and 16-bit PNGs: one token per frame, reconstructions at 7x5, a readable stream."""
    photo = _photo(5, 7)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, kind in enumerate(("gray", "bgra", "bgr16")):
        cv2.imwrite(str(folder / f"{i}.png"), _as_kind(photo, kind)[0])
    backend = open_backend("default", "onnxruntime", "fp32", threads=1)
    try:
        with open_source(str(folder)) as source:
            output = open_output(str(tmp_path / "rec"), 25)
            config = PipelineConfig(tokens=tmp_path / "t.ptok")
            report = Pipeline(source, backend, config, output).run()
    finally:
        backend.close()
    assert report.frames == 3 and report.size == (7, 5) and report.model_size == (8, 8) and report.grid == (1, 1)
    rec = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((tmp_path / "rec").glob("*.png"))]
    assert [r.shape for r in rec] == [(5, 7, 3)] * 3
    with TokenStreamReader(tmp_path / "t.ptok", expect_codebook_sha256=backend.manifest.codebook_sha256) as reader:
        frames = [item for item in reader if isinstance(item, Frame)]
        assert reader.report.ok and [f.ids.shape for f in frames] == [(1, 1)] * 3


def test_crop_of_frames_smaller_than_a_token_is_one_line_from_provq_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sample://", "--input-width", "7", "--input-height", "5", "--fit", "crop", "--max-frames", "2"]
    assert run_main([*args, "--tokens", str(tmp_path / "t.ptok")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("provq-run: error: ")]
    assert len(errors) == 1 and "smaller than one 8x8 token" in errors[0] and "Traceback" not in "".join(lines)
    assert lines[-1] == errors[0]  # the only line after the start-up line naming source and backend
    assert not (tmp_path / "t.ptok").exists()  # no frame reached the writer


# ------------------------------------------------------------------------------------------------ manifests


def _manifest_copy(tmp_path: Path, name: str = "model") -> Path:
    """A copy of the shipped model directory (fp32 files and manifest)."""
    folder = tmp_path / name
    folder.mkdir()
    for file in ("manifest.json", "encoder.onnx", "decoder.onnx"):
        shutil.copyfile(SHIPPED / file, folder / file)
    return folder


def _edit_manifest(folder: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))


ESCAPES = ["../encoder.onnx", "/ABSOLUTE/encoder.onnx", "sub/encoder.onnx", "..", ".", "", 7, None]


@pytest.mark.parametrize("name", ESCAPES, ids=repr)
def test_manifest_file_names_cannot_leave_the_model_directory(tmp_path: Path, name: object) -> None:
    folder = _manifest_copy(tmp_path)
    shutil.copyfile(SHIPPED / "encoder.onnx", tmp_path / "encoder.onnx")  # the escape target exists and matches
    if name == "/ABSOLUTE/encoder.onnx":
        name = str(tmp_path / "encoder.onnx")

    def point_elsewhere(data: dict) -> None:
        data["files"]["fp32"]["encoder"] = name

    _edit_manifest(folder, point_elsewhere)
    with pytest.raises(EdgeError) as err:
        load_manifest(folder)
    _one_line(err, "is not a plain name inside the model directory", "re-export")


def test_manifest_path_checks_names_even_past_the_loader(tmp_path: Path) -> None:
    folder = _manifest_copy(tmp_path)
    fields = load_manifest(folder).fields
    files = {**fields.files, "fp32": {**fields.files["fp32"], "decoder": "../decoder.onnx"}}
    with pytest.raises(EdgeError) as err:
        Manifest(folder, replace(fields, files=files)).path("fp32", "decoder")  # built by hand, not by load_manifest
    _one_line(err, "is not a plain name")


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", RUN_WITHOUT_TORCH, *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)


def _damage(folder: Path, case: str) -> None:
    tmp = folder.parent
    if case == "missing decoder.onnx":
        (folder / "decoder.onnx").unlink()
    elif case == "truncated encoder.onnx":
        data = (folder / "encoder.onnx").read_bytes()
        (folder / "encoder.onnx").write_bytes(data[: len(data) // 2])
    elif case == "bit-flipped encoder.onnx":
        data = bytearray((folder / "encoder.onnx").read_bytes())
        data[len(data) // 3] ^= 0x10
        (folder / "encoder.onnx").write_bytes(bytes(data))
    elif case == "garbage encoder.onnx with a matching sha256":
        (folder / "encoder.onnx").write_bytes(b"\x08\x07 this is not a protobuf of an ONNX model" * 50)
        _edit_manifest(folder, lambda d: d["sha256"].update({"encoder.onnx": sha256_file(folder / "encoder.onnx")}))
    elif case == "manifest of another format":
        _edit_manifest(folder, lambda d: d.update(format="onnx-model-zoo"))
    elif case == "manifest of a newer version":
        _edit_manifest(folder, lambda d: d.update(version=99))
    elif case == "manifest field missing":
        _edit_manifest(folder, lambda d: d.pop("codebook_sha256"))
    elif case == "manifest not JSON":
        (folder / "manifest.json").write_text('{"format": "provq-model", ')
    elif case == "manifest names ../encoder.onnx":
        shutil.copyfile(folder / "encoder.onnx", tmp / "encoder.onnx")
        _edit_manifest(folder, lambda d: d["files"]["fp32"].update(encoder="../encoder.onnx"))
    elif case == "no manifest":
        (folder / "manifest.json").unlink()
    elif case == "no model directory":
        shutil.rmtree(folder)


MODEL_DAMAGE = {
    "missing decoder.onnx": "decoder.onnx is missing (listed in manifest.json)",
    "truncated encoder.onnx": "encoder.onnx does not match its manifest (sha256 differs)",
    "bit-flipped encoder.onnx": "encoder.onnx does not match its manifest (sha256 differs)",
    "garbage encoder.onnx with a matching sha256": "ONNX Runtime cannot load",
    "manifest of another format": "is not a provq model manifest",
    "manifest of a newer version": "has manifest version 99; this provq reads 1",
    "manifest field missing": "field 'codebook_sha256' is missing",
    "manifest not JSON": "is not readable JSON (JSONDecodeError)",
    "manifest names ../encoder.onnx": "'../encoder.onnx' is not a plain name inside the model directory",
    "no manifest": "has no manifest.json",
    "no model directory": "does not exist",
}


@pytest.fixture(scope="module")
def shipped_before() -> dict[str, str]:
    return _digests(SHIPPED)


@pytest.mark.parametrize("case", MODEL_DAMAGE)
def test_damaged_model_directory_is_one_line_and_exit_2(tmp_path: Path, shipped_before: dict, case: str) -> None:
    folder = _manifest_copy(tmp_path)
    _damage(folder, case)
    done = _run_cli(tmp_path, "sample://", "--model", str(folder), "--max-frames", "2", "--tokens", "t.ptok")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("provq-run: error: "), done.stderr
    assert MODEL_DAMAGE[case] in lines[0] and "Traceback" not in done.stderr, lines[0]
    assert done.stdout == "" and not (tmp_path / "t.ptok").exists()  # nothing half-written
    assert _digests(SHIPPED) == shipped_before  # the shipped model is never touched


# ------------------------------------------------------------------------------------------------ full disk

FILE_SIZE_LIMITED = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); sys.modules['torch'] = None; "
    "from provq.edge_runtime.run_cli import main; sys.exit(main(sys.argv[1:]))"
)  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG as on a full disk


def test_provq_run_at_the_file_size_limit_keeps_every_complete_chunk(tmp_path: Path) -> None:
    """Raw 12 x 20 frames of 300 bytes in chunks of 30: the third chunk does not fit in 20 000 bytes."""
    args = ["sample://", "--input-width", "160", "--codec", "none", "--no-delta", "--tokens", "t.ptok"]
    command = [sys.executable, "-c", FILE_SIZE_LIMITED, *args, "--json", "s.json"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith("provq-run: error: t.ptok: the file size limit was reached: chunk 2 ")
    assert "the 2 chunks before it are intact" in errors[0]
    with TokenStreamReader(tmp_path / "t.ptok") as reader:
        indices = [f.index for f in reader.frames()]
        assert reader.report.ok and reader.report.torn_tail_bytes == 0
    assert indices == list(range(60)) and (tmp_path / "t.ptok").stat().st_size <= 20000
    assert not (tmp_path / "s.json").exists()  # the run failed: no figures


# ------------------------------------------------------------------------------------------------ checkpoints

PAYLOAD_CODE = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("echo PWNED > " + sys.argv[2],))
torch.save({"format": "provq-checkpoint", "version": 1, "step": 1, "model": Payload()}, sys.argv[1])
"""


def test_export_refuses_a_checkpoint_with_a_pickled_payload(tmp_path: Path) -> None:
    """provq-train --resume with such a file: tests/test_cli.py::test_pickled_payload_is_refused."""
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    made = subprocess.run(
        [sys.executable, "-c", PAYLOAD_CODE, str(evil), str(marker)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0 and evil.is_file() and not marker.exists(), made.stderr  # saving runs nothing
    done = subprocess.run(
        [sys.executable, "-m", "provq.export.cli", str(evil), "--out", str(tmp_path / "m")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("provq-export: error: ") and "safe (weights_only) loading refuses" in lines[0]
    assert "Traceback" not in done.stderr and "PWNED" not in done.stdout + done.stderr
    assert not marker.exists() and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------ parsers

# What a parser of untrusted files must not reach: code evaluation, dynamic import, unpickling. Fixed imports of
# fixed modules are fine (engine_meta imports tensorrt by name); nothing a file says may choose what runs.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint", "import_module"}
FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "yaml",
                     "runpy", "code", "codeop", "ctypes", "subprocess", "builtins"}  # fmt: skip
SAFE_ATTRIBUTES = {("json", "loads"), ("json", "load"), ("re", "compile")}  # plain JSON, regular expressions
# manifest.py finds the shipped model folder with importlib.resources.files; engine_meta.py reads provq's version
ALLOWED_IMPORTLIB = {"importlib.resources", "importlib.metadata"}
# the .ptok header and chunk parsers, their bit unpacking, the manifest (schema and directory), engine sidecars
PARSERS = [ptok_layout, ptok_reader, bitpack, manifest_schema, manifest_module, engine_meta]


def _imports(node: ast.AST) -> list[str]:
    """Fully qualified names an import statement binds (absolute imports only)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _loads_with_options(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr in {"load", "loads"} and bool(call.keywords)


def _problems(source: str) -> list[str]:
    """Every use in ``source`` of evaluation, unpickling or import by name (see the constants above)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        for name in _imports(node):
            parts = name.split(".")
            if parts[0] in FORBIDDEN_MODULES or (
                parts[0] == "importlib" and ".".join(parts[:2]) not in ALLOWED_IMPORTLIB
            ):
                problems.append(f"line {node.lineno}: import {name}")
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS:
            problems.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CALLS | {"load", "loads"}:
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if (owner, node.attr) not in SAFE_ATTRIBUTES:  # np.load, pickle.loads, yaml.load, importlib...
                problems.append(f"line {node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.Call) and _loads_with_options(node):  # object_hook=, cls=: more than plain data
            problems.append(f"line {node.lineno}: .{node.func.attr} with {[k.arg for k in node.keywords]}")
    return problems


@pytest.mark.parametrize("module", PARSERS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_file_parsers_never_evaluate_unpickle_or_import_by_name(module: object) -> None:
    assert _problems(Path(module.__file__).read_text(encoding="utf-8")) == []


def test_the_parser_check_catches_what_it_looks_for() -> None:
    hostile = """
import pickle, marshal
import importlib
from importlib import import_module
import numpy as np
def f(data, name, path):
    pickle.loads(data); marshal.loads(data); eval(name); exec(name); __import__(name)
    importlib.import_module(name); np.load(path, allow_pickle=True); json.loads(data, object_hook=print)
    return re.compile(name), json.loads(data)
"""
    found = _problems(hostile)
    for expected in ("import pickle", "import marshal", "import importlib", "importlib.import_module", "line 7: eval",
                     "line 7: exec", "line 7: __import__", "pickle.loads", "marshal.loads", "importlib.import_module",
                     "np.load", ".loads with ['object_hook']"):  # fmt: skip
        assert any(expected in problem for problem in found), (expected, found)
    assert not any("re.compile" in p or p.endswith("json.loads") for p in found)


# ------------------------------------------------------------------------------------------------ long runs


def test_soak_tool_runs_and_checks_a_short_run(tmp_path: Path) -> None:
    """tools/soak.py itself (its long run and figures: docs/RELIABILITY.md, section Soak)."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "soak.py"
    command = [sys.executable, str(tool), "--frames", "60", "--every", "0.3", "--threads", "1", "--json", "s.json"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ok"] and summary["failures"] == [] and summary["frames"] == 60 and summary["grid"] == [9, 16]
    assert summary["stream"]["frames"] == 60 and summary["stream"]["ok"] and summary["dropped"] == 0
    assert summary["fds"]["after"] <= summary["fds"]["before"] and summary["rss_mb"]["end"] > 0
    assert "soak: ok: 60 frames" in done.stdout
