"""The HTTP adapter's modules import each other without a circle, and only at the top: the
routes share their helpers through ``http/_request.py``, never through ``http/_app.py``."""

from __future__ import annotations

import ast
from pathlib import Path

HTTP = Path(__file__).resolve().parent.parent / "pushy_appliance" / "http"


def _sibling_imports(tree: ast.Module) -> dict[str, int]:
    """``{sibling module: line}`` for every ``from . import x`` / ``from ._x import …``."""
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                for alias in node.names:
                    found[alias.name] = node.lineno
            else:
                found[node.module.split(".")[0]] = node.lineno
    return found


def _graph() -> dict[str, dict[str, int]]:
    return {
        path.stem: _sibling_imports(ast.parse(path.read_text()))
        for path in sorted(HTTP.glob("*.py"))
    }


def test_no_import_circle_in_http() -> None:
    graph = _graph()
    assert {"_app", "_request", "_identity"} <= set(graph)
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path, module]))
        if module in done:
            return
        for target in graph.get(module, {}):
            visit(target, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_function_local_import_in_http() -> None:
    for path in sorted(HTTP.glob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
                raise AssertionError(f"{path.name}:{node.lineno}: import inside a function")
