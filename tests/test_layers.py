"""The layer rule of ``pushy_appliance/__init__.py``, checked on the source: no module imports
from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pushy_appliance"

# The most specific prefix wins.
LAYERS = {
    "errors": 1,
    "config": 1,
    "chef_auth": 1,
    "protocol": 1,
    "sse": 1,
    "model": 1,
    "jobs.status": 1,
    "jobs.events": 1,
    "jobs.state": 1,
    "jobs.machine": 1,
    "jobs.step": 1,
    "jobs.ending": 1,
    "jobs.record": 1,
    "jobs.validation": 1,
    "jobs.model": 1,
    "agent.whitelist": 1,
    "store": 2,
    "hub": 2,
    "feeds": 2,
    "tls": 2,
    "lockfile": 2,
    "agent.state": 2,
    "db": 3,
    "nodes": 3,
    "nodes.model": 1,
    "jobs.runner": 3,
    "jobs.retention": 3,
    "agent.executor": 3,
    "agent.runtime": 3,
    "http": 4,
    "nodesock": 4,
    "client": 4,
    "agent.connection": 4,
    "agent.multi": 5,
    "agent": 5,
    "jobs": 1,
    "appliance": 5,
    "bootstrap": 5,
    "cli": 6,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"module {module!r} has no layer: add it to the rule")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                if node.module is None:
                    # ``from . import x``: x is a module, or a name of the package itself
                    for a in node.names:
                        name = f"{target}.{a.name}".strip(".")
                        found.add(name if name in mods else target)
                    continue
            elif node.module and node.module.startswith("pushy_appliance."):
                target = node.module.removeprefix("pushy_appliance.")
            else:
                continue
            if target:
                found.add(target)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("pushy_appliance."):
                    found.add(a.name.removeprefix("pushy_appliance."))
    return found


def test_no_module_imports_upward() -> None:
    mods = modules()
    upward = []
    for module, path in sorted(mods.items()):
        own = layer(module)
        for target in sorted(imports(module, path, mods)):
            if target and layer(target) > own:
                upward.append(f"{module} (layer {own}) imports {target} (layer {layer(target)})")
    assert upward == []


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer(module)
