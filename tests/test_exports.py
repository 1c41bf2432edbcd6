"""Each package's public face, pinned: its ``__all__`` is exactly the set below and every name
in it imports. A package without ``__all__`` exports nothing and its ``__init__`` binds no
public name. A change of face is a change of this table, made on purpose."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pushy_appliance"

PUBLIC = {
    "pushy_appliance": {"__version__"},
    "pushy_appliance.agent": set(),
    "pushy_appliance.audit": set(),
    "pushy_appliance.agent.main": {"connect_settings", "run_agent"},
    "pushy_appliance.cli": {"main"},
    "pushy_appliance.cluster": {
        "DEFAULT_LEASE_TTL",
        "ClusterEngine",
        "Coordinator",
        "LeaseGrant",
        "LogHolds",
        "Solo",
        "open_coordinator",
    },
    "pushy_appliance.http": {"asgi_app", "create_app", "openapi_document"},
    "pushy_appliance.jobs": set(),
    "pushy_appliance.nodes": set(),
    "pushy_appliance.protocol": {
        "Abort",
        "Aborted",
        "AckCommit",
        "AckRun",
        "CHANNELS",
        "Commit",
        "FRAME_TYPES",
        "FROM_AGENT",
        "FROM_SERVER",
        "FactValue",
        "Facts",
        "Frame",
        "Heartbeat",
        "HeartbeatTemplate",
        "Hello",
        "JOB_STATES",
        "MAX_AGENT_VERSION_BYTES",
        "MAX_COMMAND_BYTES",
        "MAX_DIR_BYTES",
        "MAX_FACTS_DEPTH",
        "MAX_ID_BYTES",
        "MAX_KEYS",
        "MAX_KEY_BYTES",
        "MAX_PENDING_RESULT_BYTES",
        "MAX_REASON_BYTES",
        "MAX_USER_BYTES",
        "NACK_COMMIT_REASONS",
        "NackCommit",
        "NackRun",
        "Output",
        "PROTOCOL_VERSION",
        "RESULT_STATUSES",
        "Reload",
        "Result",
        "ResultAck",
        "ResultBody",
        "Run",
        "SCAN_ABOVE",
        "SUPPORTED_PROTOCOL_VERSIONS",
        "SeqTracker",
        "Sequencer",
        "Welcome",
        "decode",
        "decode_message",
        "encode",
        "encode_heartbeat_template",
    },
    "pushy_appliance.search": {
        "And",
        "DEFAULT_LIMITS",
        "EMPTY",
        "FlatFacts",
        "Live",
        "MatchAll",
        "Node",
        "Not",
        "Or",
        "Phrase",
        "Predicate",
        "Query",
        "RESERVED_FIELDS",
        "Range",
        "SearchLimits",
        "SearchSyntaxError",
        "Shape",
        "Term",
        "compile_query",
        "compile_tree",
        "flatten_facts",
        "parse",
    },
    "pushy_appliance.webhooks": set(),
    "pushy_appliance.store": {
        "BlobRef",
        "FileStore",
        "RETRY_MAX",
        "MAX_RECORD_BYTES",
        "MemoryStore",
        "Recovered",
        "Store",
        "StoreStatistics",
        "VerifyReport",
        "connect_postgres",
        "wait_postgres_doorbell",
        "open_postgres_store",
        "open_store",
        "redact_url",
        "verify_postgres_store",
        "verify_store",
    },
}


def packages() -> list[str]:
    return sorted(
        ".".join(("pushy_appliance", *init.parent.relative_to(PACKAGE).parts))
        for init in PACKAGE.rglob("__init__.py")
    )


def public_bindings(source: str) -> list[str]:
    """The public names a module's top level binds (``from __future__`` ones aside)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            names += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def test_every_package_is_pinned() -> None:
    assert set(packages()) <= set(PUBLIC)


@pytest.mark.parametrize(("name", "expected"), sorted(PUBLIC.items()))
def test_public_face(name: str, expected: set[str]) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert expected == set()
        assert module.__file__ is not None
        assert public_bindings(Path(module.__file__).read_text()) == []
        return
    assert sorted(exported) == sorted(expected)
    assert len(exported) == len(set(exported))
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # every name in __all__ imports
    assert set(namespace) - {"__builtins__"} == expected


def test_public_bindings_sees_what_a_module_binds() -> None:
    source = (
        "from __future__ import annotations\n"
        "import os.path\n"
        "from ._app import create_app as make, _private\n"
        "def run(): ...\n"
        "class Thing: ...\n"
        "LIMIT: int = 3\n"
        "a, (b, _c) = 1, (2, 3)\n"
        "_hidden = 1\n"
    )
    assert public_bindings(source) == ["os", "make", "run", "Thing", "LIMIT", "a", "b"]
