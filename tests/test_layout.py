"""The shape docs/architecture.md promises, checked on the source: dependencies run one way
(daemon -> pipeline -> models), no import cycle, small modules and small functions, and a
pipeline (and recognizer protocol) that imports without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "pipeline", "models")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# What each package may import of the others.
ALLOWED = {"daemon": {"daemon", "pipeline", "models"}, "pipeline": {"pipeline", "models"}, "models": {"models"}}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Our modules that ``path`` imports anywhere (module level, functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def test_dependencies_run_one_way_without_cycles() -> None:
    mods = modules()
    graph = {name: imports(path, set(mods)) - {name} for name, path in mods.items()}
    for name, targets in graph.items():
        package = name.split(".")[0]
        wrong = sorted(t for t in targets if t.split(".")[0] not in ALLOWED[package])
        assert not wrong, f"{name} imports {wrong}: dependencies run daemon -> pipeline -> models"
    # A cycle would show as a module reachable from itself.
    for start in graph:
        seen: set[str] = set()
        stack = list(graph[start])
        while stack:
            current = stack.pop()
            assert current != start, f"import cycle through {start}"
            if current not in seen:
                seen.add(current)
                stack.extend(graph.get(current, ()))


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name: str) -> None:
    path = modules()[name]
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path} has more than {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} is {length} lines"


def test_the_pipeline_and_the_recognizer_protocol_import_without_torch() -> None:
    code = (
        "import sys; import pipeline.graph, pipeline.batch, models.api, daemon.config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
