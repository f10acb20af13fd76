"""The import graph of the four stages, read from the source with ``ast``: the runtime (which ships to the device
without torch) imports no other stage at module level, and no two stages import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "export", "calibration", "edge_runtime")
RUNTIME_DEPENDENCIES = {"numpy", "cv2", "onnxruntime", "onnx", "tensorrt", "cuda", "zstandard"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["provq", *parts])


def _imports(path: Path, *, module_level: bool) -> set[str]:
    """Absolute names of the modules ``path`` imports: at module level only (outside every function), or all."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    nodes: list[ast.AST] = []
    if module_level:
        pending: list[ast.AST] = list(tree.body)
        while pending:
            node = pending.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            nodes.append(node)
            pending.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, node.module] if node.module else base))
    return names


def _stage_graph(*, module_level: bool) -> dict[str, dict[str, list[str]]]:
    """{stage: {other stage: [modules of stage that import it]}}."""
    graph: dict[str, dict[str, list[str]]] = {stage: {} for stage in STAGES}
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            for name in _imports(path, module_level=module_level):
                parts = name.split(".")
                if len(parts) > 1 and parts[0] == "provq" and parts[1] in STAGES and parts[1] != stage:
                    graph[stage].setdefault(parts[1], []).append(_module_name(path))
    return graph


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    found = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == trail[0]:
                found.append([*trail, nxt])
            elif nxt not in trail and nxt > trail[0]:
                visit(nxt, [*trail, nxt])

    for stage in STAGES:
        visit(stage, [stage])
    return found


def test_the_reader_sees_relative_and_absolute_imports() -> None:
    names = _imports(ROOT / "edge_runtime" / "manifest.py", module_level=True)
    assert {"provq.edge_runtime.errors", "provq.edge_runtime.formats.manifest", "math"} <= names
    names = _imports(ROOT / "export" / "onnx_export.py", module_level=True)
    assert {"provq.train.model", "provq.edge_runtime.formats.graph", "provq.export.graphs", "torch"} <= names
    assert "provq.export.onnx_export" in _imports(ROOT / "export" / "cli.py", module_level=False)
    assert "provq.export.onnx_export" not in _imports(ROOT / "export" / "cli.py", module_level=True)


def test_the_runtime_imports_no_other_stage_and_no_torch_at_module_level() -> None:
    assert _stage_graph(module_level=True)["edge_runtime"] == {}
    for path in sorted((ROOT / "edge_runtime").rglob("*.py")):
        external = {n.split(".")[0] for n in _imports(path, module_level=True)} - {"provq", "__future__"}
        third_party = {n for n in external if n not in sys.stdlib_module_names}
        assert third_party <= RUNTIME_DEPENDENCIES, f"{path.relative_to(ROOT)} imports {third_party}"


def test_no_two_stages_import_each_other() -> None:
    graph = _stage_graph(module_level=True)
    assert _cycles(graph) == [], graph
    assert set(graph["train"]) == {"edge_runtime"} and set(graph["calibration"]) == {"edge_runtime", "export"}
    # Counting the imports inside functions too, the one extra edge is the benchmark's optional PyTorch row
    # (edge_runtime -> train, imported only when that row runs and torch is installed).
    lazy = _stage_graph(module_level=False)
    assert lazy["edge_runtime"].keys() <= {"train"}
    assert all(m.startswith("provq.edge_runtime.bench") for m in lazy["edge_runtime"].get("train", [])), lazy
    assert _cycles({**lazy, "edge_runtime": {}}) == []


def test_every_runtime_module_imports_with_torch_blocked() -> None:
    modules = [_module_name(p) for p in sorted((ROOT / "edge_runtime").rglob("*.py"))]
    code = "import importlib, sys; sys.modules['torch'] = None\n" + "".join(
        f"importlib.import_module({m!r})\n" for m in modules
    )
    done = subprocess.run([sys.executable, "-c", code + "print('ok')"], capture_output=True, text=True, check=False)
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
