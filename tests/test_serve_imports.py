"""The serve package's imports point one way (app -> routes -> state -> service/backends), with no
circle, and the backends import the engine plainly: checked on the source, by an AST walk."""
from __future__ import annotations

import ast

from qaforge.paths import PACKAGE_DIR

SERVE = PACKAGE_DIR / "serve"


def _imports(path) -> set[str]:
    """Every qaforge.serve module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qaforge.serve"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("qaforge.serve"))
    return found


def _graph() -> dict[str, set[str]]:
    return {f"qaforge.serve.{p.stem}": _imports(p) for p in SERVE.glob("*.py") if p.stem != "__init__"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_import_circle_in_serve():
    graph = _graph()
    assert "qaforge.serve.state" in graph["qaforge.serve.routes_grader"]
    assert "qaforge.serve.state" in graph["qaforge.serve.routes_openai"]
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_routes_never_import_the_app_and_backends_import_the_engine_plainly():
    graph = _graph()
    for name, deps in graph.items():
        if name != "qaforge.serve.app":
            assert "qaforge.serve.app" not in deps or name == "qaforge.serve.command", name
    source = (SERVE / "backends.py").read_text(encoding="utf-8")
    assert "importlib" not in source and "from qaforge.engine.async_engine import AsyncLLM" in source
