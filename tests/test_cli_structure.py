"""The CLI's modules import one another without circles: ``_main`` imports the command
modules, they import ``_common``, and nothing imports ``_main`` (function-local imports
count too)."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parent.parent / "pushy_appliance" / "cli"


def cli_imports() -> dict[str, set[str]]:
    """For each ``cli`` module, the ``cli`` modules it imports anywhere in its source."""
    names = {path.stem for path in CLI.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in CLI.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:
                    found.update(a.name for a in node.names if a.name in names)
                else:
                    found.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["pushy_appliance", "cli"] and len(parts) > 2:
                    found.add(parts[2])
        graph[path.stem] = found & names
    return graph


def test_no_import_circles_in_the_cli() -> None:
    graph = cli_imports()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            else:
                visit(target, [*path, target])

    for module in sorted(graph):
        visit(module, [module])
    assert circles == []


def test_only_the_entry_points_import_main() -> None:
    importers = sorted(m for m, targets in cli_imports().items() if "_main" in targets)
    assert importers == ["__init__", "__main__"]
