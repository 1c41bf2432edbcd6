"""The layer rule of ``pushy_appliance/__init__.py``, checked on the source.

* No module imports from a layer above its own. Every form of import counts, function-local
  ones too, each resolved to the module it names: ``from ..jobs import runner`` is an import
  of ``jobs.runner``, not of ``jobs``; ``from pushy_appliance import protocol`` and
  ``import pushy_appliance.x as y`` are imports of ``protocol`` and ``x``.
* The pure layer (1) does no I/O: no file, terminal, environment, clock, network, other
  process, task or thread (:data:`IMPURE`).
* A package's ``__init__`` imports nothing above the lowest layer of its submodules: importing
  a submodule runs the package's ``__init__`` first.
* No module imports another package's private (``_name``) module.
* No import cycles.

Each check also runs on small made-up sources that break its rule, so that it is shown to
catch what it claims (the ``test_checker_…`` tests).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pushy_appliance"

# The most specific prefix wins.
LAYERS = {
    "errors": 1,
    "config": 1,
    "config_base": 1,
    "config_agent": 1,
    "paths": 1,
    "chef_auth": 1,
    "protocol": 1,
    "sse": 1,
    "model": 1,
    "jsonbody": 1,
    "jobfile": 1,
    "urls": 1,
    "replay": 1,
    "auth": 1,
    "websession": 1,
    "jobs.status": 1,
    "jobs.events": 1,
    "jobs.state": 1,
    "jobs.machine": 1,
    "jobs.step": 1,
    "jobs.ending": 1,
    "jobs.record": 1,
    "jobs.validation": 1,
    "jobs.model": 1,
    "jobs.output": 1,
    "jobs.compact": 1,
    "jobs.details": 1,
    "jobs.history": 1,
    "jobs.rerun": 1,
    "jobs.build": 1,
    "audit": 1,
    "audit.recorder": 3,
    "audit.retention": 3,
    "webhooks": 1,
    "webhooks.engine": 3,
    "agent.whitelist": 1,
    "agent.failover": 1,
    "search": 1,
    "facts": 1,
    "cluster_secrets": 1,
    "agent.facts_parse": 1,
    "store": 2,
    "cluster": 2,
    "config_files": 2,
    "hub": 2,
    "feeds": 2,
    "tls": 2,
    "lockfile": 2,
    "fsutil": 2,
    "frame_reader": 2,
    "handshakes": 2,
    "agent.state": 2,
    "agent.facts": 2,
    "db": 3,
    "db_archive": 3,
    "services": 3,
    "nodes": 3,
    "nodes.model": 1,
    "jobs.runner": 3,
    "jobs.cluster_port": 3,
    "jobs.effects": 3,
    "jobs.live": 3,
    "jobs.retention": 3,
    "agent.executor": 3,
    "agent.jobspec": 3,
    "agent.outstream": 3,
    "agent.procgroup": 3,
    "agent.runtime": 3,
    "agent.reporter": 3,
    "http": 4,
    "nodesock": 4,
    "client": 4,
    "agent.connection": 4,
    "agent.main": 5,
    "agent.multi": 5,
    "agent": 5,
    "jobs": 1,
    "appliance": 5,
    "bootstrap": 5,
    "sandbox": 5,
    "cli": 6,
}

# --- what the pure layer may not touch -------------------------------------------------------
# A dotted name (resolved through the module's imports) is impure when it or a prefix of it is
# in IMPURE and neither it nor a prefix of it is in PURE. Randomness is allowed: it is neither
# I/O nor a clock (RSA blinding and key generation need it).

IMPURE = frozenset(
    {
        # files, terminals, the process's environment and identity
        "builtins.open",
        "builtins.print",
        "builtins.input",
        "io",
        "os",
        "pathlib.Path.home",
        "pathlib.Path.cwd",
        "shutil",
        "tempfile",
        "glob",
        "fcntl",
        "pwd",
        "grp",
        "getpass",
        "platform",
        "logging",
        "sys.stdin",
        "sys.stdout",
        "sys.stderr",
        "sys.argv",
        # the clock
        "time",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
        "uuid.uuid1",
        # the network and other processes
        "socket",
        "ssl",
        "select",
        "selectors",
        "http.client",
        "urllib.request",
        "httpx",
        "trio_websocket",
        "subprocess",
        "signal",
        "multiprocessing",
        # tasks and threads
        "trio",
        "asyncio",
        "threading",
        "concurrent",
    }
)
# The pure corners of impure modules: in-memory streams and path arithmetic, no system call.
PURE = frozenset(
    {
        "io.BytesIO",
        "io.StringIO",
        "os.PathLike",
        "os.fspath",
        "os.sep",
        "os.path.basename",
        "os.path.dirname",
        "os.path.isabs",
        "os.path.join",
        "os.path.normpath",
        "os.path.split",
        "os.path.splitext",
        # address text to bytes: a pure conversion (the search matcher's CIDR test)
        "socket.AF_INET",
        "socket.AF_INET6",
        "socket.inet_pton",
    }
)
# Methods that reach the file system whatever they are called on (``Path`` above all). Not
# listed because pure code uses the same names: replace (str, dataclasses), resolve
# (Whitelist), touch (the job machine), group and owner (re.Match and friends), rename.
IMPURE_METHODS = frozenset(
    {
        "absolute",
        "chmod",
        "exists",
        "expanduser",
        "glob",
        "hardlink_to",
        "is_dir",
        "is_file",
        "is_symlink",
        "iterdir",
        "lstat",
        "mkdir",
        "open",
        "read_bytes",
        "read_text",
        "readlink",
        "rglob",
        "rmdir",
        "samefile",
        "stat",
        "symlink_to",
        "unlink",
        "write_bytes",
        "write_text",
    }
)
BUILTINS = frozenset({"open", "print", "input"})

ROOT = ""  # the package itself (``pushy_appliance/__init__.py``): it imports nothing


# --- the source ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Module:
    """One module of the package: its name relative to ``pushy_appliance`` and its syntax tree."""

    name: str
    is_package: bool
    tree: ast.Module


def parse(sources: Mapping[str, str], packages: Iterable[str] = ()) -> dict[str, Module]:
    """Made-up modules for the checker tests (``packages`` are ``__init__`` modules)."""
    kinds = set(packages)
    return {
        name: Module(name, name in kinds or name == ROOT, ast.parse(text))
        for name, text in sources.items()
    }


def load_package() -> dict[str, Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = Module(name, is_package, ast.parse(path.read_text(), str(path)))
    return out


def layer(module: str) -> int:
    if module == ROOT:
        return 1
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"module {module!r} has no layer: add it to the rule")


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def _internal(absolute: str) -> str | None:
    """``pushy_appliance.x.y`` → ``x.y``; ``None`` for other distributions."""
    if absolute == "pushy_appliance":
        return ROOT
    if absolute.startswith("pushy_appliance."):
        return absolute.removeprefix("pushy_appliance.")
    return None


@dataclasses.dataclass(frozen=True)
class Import:
    target: str
    line: int


def imports(module: Module, names: Iterable[str]) -> list[Import]:
    """Every import of a package module in ``module`` (function-local ones too), each resolved
    to the module it names: ``from X import y`` names ``X.y`` when that is a module, else ``X``.
    """
    known = set(names)
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _internal(alias.name)
                if target is not None:
                    found.append(Import(target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.name.split(".") if module.name else []
                if not module.is_package:
                    package = package[:-1]
                if node.level - 1 > len(package):
                    raise AssertionError(f"{module.name}:{node.lineno}: relative import beyond")
                base_parts = package[: len(package) - (node.level - 1)]
                if node.module:
                    base_parts.append(node.module)
                base: str | None = ".".join(base_parts)
            else:
                base = _internal(node.module or "")
            if base is None:
                continue
            for alias in node.names:
                sub = _join(base, alias.name)
                found.append(Import(sub if sub in known else base, node.lineno))
    return list(dict.fromkeys(found))  # one per target and line


def graph(mods: Mapping[str, Module]) -> dict[str, set[str]]:
    return {
        name: {i.target for i in imports(m, mods) if i.target != name} for name, m in mods.items()
    }


# --- the checks ------------------------------------------------------------------------------


def upward_imports(mods: Mapping[str, Module]) -> list[str]:
    out = []
    for name, module in sorted(mods.items()):
        own = layer(name)
        for i in imports(module, mods):
            if layer(i.target) > own:
                out.append(
                    f"{name}:{i.line} (layer {own}) imports {i.target} (layer {layer(i.target)})"
                )
    return out


def _bound_names(tree: ast.Module) -> set[str]:
    """Names the module binds itself anywhere (so ``open`` there may not be the builtin)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.ExceptHandler
        ):
            bound.add(node.name or "")
    return bound


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → the dotted name it stands for, from every import of the module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            for a in node.names:
                out[a.asname or a.name] = f"{base}.{a.name}"
    return out


def _dotted(node: ast.expr, aliases: Mapping[str, str], builtins: set[str]) -> str | None:
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    if node.id in aliases:
        root = aliases[node.id]
    elif node.id in builtins:
        root = f"builtins.{node.id}"
    else:
        return None
    return ".".join([root, *reversed(attrs)])


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


def impure_uses(module: Module) -> list[tuple[int, str]]:
    """``(line, name)`` of every use of :data:`IMPURE` and :data:`IMPURE_METHODS` in ``module``."""
    aliases = _aliases(module.tree)
    builtins = set(BUILTINS - _bound_names(module.tree))
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(module.tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    found = []
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Name | ast.Attribute) or not isinstance(node.ctx, ast.Load):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            continue  # a chain is looked at once, from its outermost attribute
        dotted = _dotted(node, aliases, builtins)
        if dotted is not None:
            prefixes = _prefixes(dotted)
            if any(p in IMPURE for p in prefixes) and not any(p in PURE for p in prefixes):
                found.append((node.lineno, dotted))
            continue
        # on an object of unknown type (``Path(x).read_text()``, ``self.path.exists()``)
        while isinstance(node, ast.Attribute):
            if node.attr in IMPURE_METHODS:
                found.append((node.lineno, f".{node.attr}()"))
            node = node.value
    return sorted(set(found))


def impure_modules(mods: Mapping[str, Module]) -> list[tuple[str, int, str]]:
    return [
        (name, line, what)
        for name, module in sorted(mods.items())
        if layer(name) == 1
        for line, what in impure_uses(module)
    ]


def init_imports_above(mods: Mapping[str, Module]) -> list[str]:
    out = []
    for name, module in sorted(mods.items()):
        if not module.is_package:
            continue
        inside = [m for m in mods if m != name and (name == ROOT or m.startswith(name + "."))]
        if not inside:
            continue
        lowest = min(inside, key=layer)
        for i in imports(module, mods):
            if layer(i.target) > layer(lowest):
                out.append(
                    f"{name or 'pushy_appliance'}/__init__:{i.line} imports {i.target} (layer "
                    f"{layer(i.target)}) but holds {lowest} (layer {layer(lowest)})"
                )
    return out


def _owner_of_private(target: str) -> str | None:
    """The package whose private module ``target`` is (``http`` for ``http._auth``)."""
    parts = target.split(".")
    for n, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:n])
    return None


def private_imports(mods: Mapping[str, Module]) -> list[tuple[str, str, int]]:
    out = []
    for name, module in sorted(mods.items()):
        for i in imports(module, mods):
            owner = _owner_of_private(i.target)
            if owner is None or name == owner or name.startswith(owner + ".") or owner == ROOT:
                continue
            out.append((name, i.target, i.line))
    return out


@dataclasses.dataclass(frozen=True)
class Cycle:
    """A strongly connected component of the import graph, and one cycle through it."""

    members: frozenset[str]
    path: list[str]

    def __str__(self) -> str:
        return f"{' → '.join(self.path)} (in {', '.join(sorted(self.members))})"


def import_cycles(mods: Mapping[str, Module]) -> list[Cycle]:
    """Every set of modules that import each other, directly or not (Tarjan's algorithm)."""
    edges = graph(mods)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in edges:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return [Cycle(c, _one_cycle(c, edges)) for c in sorted(components, key=sorted)]


def _one_cycle(component: frozenset[str], edges: Mapping[str, set[str]]) -> list[str]:
    """The shortest cycle from the component's first module back to it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


# --- the package -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return load_package()


def test_every_module_has_a_layer(package: dict[str, Module]) -> None:
    for module in package:
        layer(module)


def test_no_module_imports_upward(package: dict[str, Module]) -> None:
    assert upward_imports(package) == []


def test_the_pure_layer_does_no_io(package: dict[str, Module]) -> None:
    assert [f"{m}:{line}: {what}" for m, line, what in impure_modules(package)] == []


def test_package_inits_import_nothing_above_their_lowest_submodule(
    package: dict[str, Module],
) -> None:
    assert init_imports_above(package) == []


def test_no_module_imports_another_packages_private_module(
    package: dict[str, Module],
) -> None:
    assert [f"{m}:{line} imports {t}" for m, t, line in private_imports(package)] == []


def test_no_import_cycles(package: dict[str, Module]) -> None:
    assert [str(c) for c in import_cycles(package)] == []


# --- the checker, on made-up sources ---------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        ("agent.runtime", False, "from . import whitelist", ["agent.whitelist"]),
        ("agent.runtime", False, "from .. import chef_auth, __version__", ["chef_auth", ROOT]),
        ("agent.runtime", False, "from ..jobs import runner", ["jobs.runner"]),
        ("agent.runtime", False, "from ..jobs.machine import Job", ["jobs.machine"]),
        ("agent.runtime", False, "from ..agent import run_agent", ["agent"]),
        ("agent.runtime", False, "from .main import run_agent", ["agent.main"]),
        ("agent", True, "from . import whitelist", ["agent.whitelist"]),
        ("agent", True, "from .main import run_agent", ["agent.main"]),
        ("agent", True, "from .. import protocol", ["protocol"]),
        ("protocol", False, "from pushy_appliance import jobs", ["jobs"]),
        ("protocol", False, "from pushy_appliance import protocol as p, sse", ["protocol", "sse"]),
        ("protocol", False, "from pushy_appliance.jobs import runner", ["jobs.runner"]),
        ("protocol", False, "from pushy_appliance.jobs.runner import JobRunner", ["jobs.runner"]),
        ("protocol", False, "import pushy_appliance.jobs.runner as r", ["jobs.runner"]),
        ("protocol", False, "import pushy_appliance.jobs.runner", ["jobs.runner"]),
        ("protocol", False, "import pushy_appliance", [ROOT]),
        ("protocol", False, "def f():\n    from .http import _auth", ["http._auth"]),
        ("protocol", False, "import os, trio\nfrom json import dumps", []),
    ],
)
def test_checker_resolves_every_import_form(
    module: str, is_package: bool, source: str, expected: list[str]
) -> None:
    names = {
        "agent",
        "agent.main",
        "agent.runtime",
        "agent.whitelist",
        "chef_auth",
        "http",
        "http._auth",
        "jobs",
        "jobs.machine",
        "jobs.runner",
        "protocol",
        "sse",
    }
    tree = Module(module, is_package, ast.parse(source))
    assert [i.target for i in imports(tree, names)] == expected


def test_checker_finds_upward_imports_in_every_form() -> None:
    mods = parse(
        {
            "protocol": "from pushy_appliance.jobs import runner",
            "sse": "def later():\n    import pushy_appliance.nodes.registry as r",
            "chef_auth": "from .jobs.runner import JobRunner",
            "errors": "from . import protocol",  # same layer: fine
            "jobs.runner": "",
            "nodes.registry": "",
        },
    )
    assert upward_imports(mods) == [
        "chef_auth:1 (layer 1) imports jobs.runner (layer 3)",
        "protocol:1 (layer 1) imports jobs.runner (layer 3)",
        "sse:2 (layer 1) imports nodes.registry (layer 3)",
    ]


IMPURE_SOURCES = [
    ("open('x')", "builtins.open"),
    ("print('x')", "builtins.print"),
    ("from pathlib import Path\nPath('x').read_text()", ".read_text()"),
    ("from pathlib import Path\nPath.home()", "pathlib.Path.home"),
    ("import os\nos.environ['X']", "os.environ"),
    ("import os\nos.environ.get('X')", "os.environ.get"),
    ("from os import getenv\ngetenv('X')", "os.getenv"),
    ("import os.path\nos.path.exists('x')", "os.path.exists"),
    ("import os\nos.geteuid()", "os.geteuid"),
    ("import time\ntime.monotonic()", "time.monotonic"),
    ("from time import time as now\nclock = now", "time.time"),
    ("from datetime import UTC, datetime\ndatetime.now(UTC)", "datetime.datetime.now"),
    ("import datetime as dt\ndt.datetime.now()", "datetime.datetime.now"),
    ("import trio\nasync def f():\n    await trio.sleep(1)", "trio.sleep"),
    ("import trio\nasync def f(n):\n    n.start_soon(trio.sleep_forever)", "trio.sleep_forever"),
    ("import socket\nsocket.create_connection(('h', 1))", "socket.create_connection"),
    ("import subprocess as sp\nsp.run(['x'])", "subprocess.run"),
    ("import logging\nlog = logging.getLogger(__name__)", "logging.getLogger"),
]


@pytest.mark.parametrize(("source", "expected"), IMPURE_SOURCES)
def test_checker_finds_io_in_the_pure_layer(source: str, expected: str) -> None:
    assert [what for _, what in impure_uses(parse({"protocol": source})["protocol"])] == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.path.join('a', 'b')",
        "from os import PathLike, fspath\ndef f(p: PathLike[str]) -> str:\n    return fspath(p)",
        "from pathlib import PurePosixPath\nPurePosixPath('a') / 'b'",
        "import io\nio.BytesIO(b'')",
        "from datetime import datetime\ndatetime.fromisoformat('2024-01-01')",
        "import re\nm = re.match('a', 'a')\nm.group(0) if m else None",
        "x = 'a'.replace('a', 'b')",
        "import dataclasses\ndataclasses.replace",
        "def f(open):\n    return open(1)",
        "import secrets\nsecrets.randbelow(5)",
        "from .errors import ConfigError\nConfigError",
    ],
)
def test_checker_lets_pure_code_be(source: str) -> None:
    assert impure_uses(parse({"protocol": source})["protocol"]) == []


def test_checker_looks_only_at_the_pure_layer() -> None:
    mods = parse({"protocol": "import time\ntime.time()", "hub": "import time\ntime.time()"})
    assert impure_modules(mods) == [("protocol", 2, "time.time")]


def test_checker_finds_a_package_init_that_imports_above_its_submodules() -> None:
    mods = parse(
        {
            "agent": "from .connection import open_node_socket",
            "agent.whitelist": "",
            "agent.connection": "",
            "store": "from ._base import Store\nfrom ..errors import StoreError",
            "store._base": "",
            "errors": "",
        },
        packages={"agent", "store"},
    )
    assert init_imports_above(mods) == [
        "agent/__init__:1 imports agent.connection (layer 4) but holds agent.whitelist (layer 1)"
    ]


def test_checker_finds_imports_of_another_packages_private_module() -> None:
    mods = parse(
        {
            "nodesock": "from .http._auth import authenticate",
            "appliance": "from .http import _context",
            "http": "from ._app import create_app",
            "http._app": "from ._auth import authenticate\nfrom . import _context",
            "http._auth": "",
            "http._context": "",
        },
        packages={"http"},
    )
    assert private_imports(mods) == [
        ("appliance", "http._context", 1),
        ("nodesock", "http._auth", 1),
    ]


def test_checker_finds_import_cycles_function_local_ones_too() -> None:
    mods = parse(
        {
            "cli._main": "from . import _admin",
            "cli._admin": "def later():\n    from ._jobs import run",
            "cli._jobs": "from ._main import version_text",
            "cli._serve": "from . import _admin",
            "http._app": "from ._jobs import routes",
            "http._jobs": "import pushy_appliance.http._app",
            "http._status": "",
        },
    )
    assert [str(c) for c in import_cycles(mods)] == [
        "cli._admin → cli._jobs → cli._main → cli._admin (in cli._admin, cli._jobs, cli._main)",
        "http._app → http._jobs → http._app (in http._app, http._jobs)",
    ]
