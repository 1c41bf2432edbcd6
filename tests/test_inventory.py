"""The inventory's parts: stored facts (``nodes/model.py``), search over a fleet
(``nodes/inventory.py``), ``POST jobs`` with ``search`` (``jobs/validation.py``), the agent's
facts reporter (``agent/reporter.py``) and its ``[facts]`` configuration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from pushy_appliance import protocol
from pushy_appliance.agent.facts import CollectedFacts
from pushy_appliance.agent.reporter import FactsReporter
from pushy_appliance.agent.runtime import AgentRuntime
from pushy_appliance.agent.state import StateFile
from pushy_appliance.agent.whitelist import Whitelist
from pushy_appliance.config import AgentConfig, build_agent_config
from pushy_appliance.config_files import load_agent_config
from pushy_appliance.errors import AgentError, ConfigError, SearchRequestError, ValidationError
from pushy_appliance.facts import FactsConfig
from pushy_appliance.jobs.validation import validate_job_request, with_matches
from pushy_appliance.nodes import inventory as inventory_module
from pushy_appliance.nodes.inventory import Inventory
from pushy_appliance.nodes.link import NodeLink
from pushy_appliance.nodes.model import NodeModel
from pushy_appliance.search import EMPTY, compile_query

from helpers import idle_hello, memory_registry

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def seen(name: str, status: str = "online", facts: Any = None, org: str = "o") -> dict[str, Any]:
    return {"t": "node.seen", "org": org, "name": name, "status": status, "at": 1.0,
            "facts": facts, "incarnation": None}  # fmt: skip


# --- stored facts ---------------------------------------------------------------------------


def test_facts_are_kept_packed_and_flattened_once_per_change() -> None:
    model = NodeModel()
    facts = {"platform": "debian", "tags": ["web"], "uptime_seconds": 5}
    model.apply(seen("a", facts=facts))
    flat = model.flat("o", "a")
    assert flat["tags"] == "web" and "uptime_seconds" not in flat
    assert model.facts("o", "a") == {"platform": "debian", "tags": ["web"]}
    # the same facts again (another uptime): nothing is flattened again
    model.apply(seen("a", facts={**facts, "uptime_seconds": 99}))
    assert model.flat("o", "a") is flat
    assert model.same_facts("o", "a", {**facts, "uptime_seconds": 1})
    # an offline record carries no facts: they stay
    model.apply(seen("a", status="offline"))
    assert model.flat("o", "a") is flat
    # a facts frame's record changes them
    model.apply({"t": "node.facts", "org": "o", "name": "a", "facts": {"tags": ["db"]}, "at": 2})
    assert model.facts("o", "a") == {"tags": ["db"]}
    assert model.flat("o", "a")["tags"] == "db"
    assert not model.same_facts("o", "a", facts)
    # a node that never said hello gets no entry from a facts record
    model.apply({"t": "node.facts", "org": "o", "name": "z", "facts": {}, "at": 2})
    assert model.names("o") == ["a"]


def test_names_stay_sorted_and_deletions_forget_nodes() -> None:
    model = NodeModel()
    for name in ("c", "a", "b"):
        model.apply(seen(name))
    model.apply(seen("x", org="other"))
    assert model.names("o") == ["a", "b", "c"]
    model.apply({"t": "client.del", "org": "o", "name": "b"})
    assert model.names("o") == ["a", "c"]
    assert model.flat("o", "b") is EMPTY and model.facts("o", "b") is None
    model.apply({"t": "org.del", "name": "o"})
    assert model.names("o") == [] and model.names("other") == ["x"]


def test_snapshot_keeps_packed_facts_and_loads_old_snapshots() -> None:
    model = NodeModel()
    model.apply(seen("a", facts={"kernel": {"machine": "x86_64"}}))
    snap = model.snapshot()
    assert all("flat" not in entry for entry in snap)
    restored = NodeModel()
    restored.load(msgpack.unpackb(msgpack.packb(snap, use_bin_type=True), raw=False))
    assert restored.facts("o", "a") == {"kernel": {"machine": "x86_64"}}
    assert restored.flat("o", "a")["kernel_machine"] == "x86_64"
    # a snapshot written before the inventory held the facts as a map
    old = NodeModel()
    old.load([{"org": "o", "name": "b", "status": "offline", "at": 3.0, "facts": {"x": "1"}}])
    assert old.facts("o", "b") == {"x": "1"} and old.flat("o", "b")["x"] == "1"
    assert old.names("o") == ["b"]


def test_a_loaded_snapshot_keeps_each_node_beside_its_own_facts() -> None:
    model = NodeModel()
    for name in ("c", "a", "d", "b"):
        model.apply(seen(name, facts=None if name == "d" else {"me": name}))
    model.apply(seen("x", org="other", facts={"me": "x"}))
    restored = NodeModel()
    restored.load(model.snapshot())
    assert restored.names("o") == ["a", "b", "c", "d"]
    assert [restored.flat("o", n).get("me") for n in "abcd"] == ["a", "b", "c", None]
    assert restored.flat("other", "x")["me"] == "x"
    assert restored.nodes[("o", "c")]["status"] == "online" and ("o", "e") not in restored.nodes
    assert sorted(restored.nodes) == [
        ("o", "a"),
        ("o", "b"),
        ("o", "c"),
        ("o", "d"),
        ("other", "x"),
    ]


# --- search over a fleet --------------------------------------------------------------------


async def test_search_finds_offline_nodes_by_facts_and_live_state_by_the_registry() -> None:
    async with memory_registry() as registry:
        link = NodeLink(registry)
        inventory = Inventory(registry.db, registry, link)
        for name, tags in (("web-1", ["web"]), ("web-2", ["web"]), ("db-1", ["db"])):
            await registry.record_status("o", name, "online", {"tags": tags}, "i")
        await registry.record_status("o", "web-2", "offline")
        outbox = []
        session, receive = registry.open_session("o", "web-1", idle_hello(), lambda c, r: None)
        outbox.append(receive)

        async def found(text: str | None) -> list[str]:
            return await inventory.search("o", None if text is None else compile_query(text))

        assert await found(None) == ["db-1", "web-1", "web-2"]
        assert await found("tags:web") == ["web-1", "web-2"]
        assert await found("tags:web AND status:online") == ["web-1"]
        assert await found("status:offline") == ["db-1", "web-2"]
        assert await found("availability:available") == ["web-1"]
        link.hold("o", "job", ["web-1"])
        assert await found("availability:available") == []
        assert await found("online") == ["web-1"]  # a bare term reads the live state too
        row = inventory.row("o", "web-2")
        assert row is not None
        assert (row.status, row.availability) == ("offline", "unavailable")
        assert row.facts == {"tags": ["web"]}
        assert inventory.row("o", "nobody") is None
        # a facts frame: stored once, not again when repeated
        assert await inventory.node_facts(session, {"tags": ["web", "canary"]})
        assert not await inventory.node_facts(session, {"tags": ["web", "canary"]})
        assert await found("tags:canary") == ["web-1"]


async def test_a_search_over_many_nodes_yields_between_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inventory_module, "CHUNK", 10)
    async with memory_registry() as registry:
        inventory = Inventory(registry.db, registry, NodeLink(registry))
        for i in range(35):
            await registry.record_status("o", f"n{i:02d}", "online", {"i": i % 2}, "x")
        checkpoints = 0

        async def count() -> None:
            nonlocal checkpoints
            while True:
                await trio.lowlevel.checkpoint()
                checkpoints += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count)
            await trio.lowlevel.checkpoint()
            before = checkpoints
            hits = await inventory.search("o", compile_query("i:1"))
            assert checkpoints - before >= 3  # 35 nodes, 10 a chunk: four chunks
            nursery.cancel_scope.cancel()
        assert hits == [f"n{i:02d}" for i in range(1, 35, 2)]


class CountingLink:
    """The node link's ``status``, counting the nodes it is asked about."""

    def __init__(self, online: set[str]) -> None:
        self.online = online
        self.asked: list[str] = []

    def status(self, org: str, name: str) -> tuple[str, str]:
        self.asked.append(name)
        return ("online", "available") if name in self.online else ("offline", "unavailable")


async def test_search_asks_for_the_live_state_only_when_the_query_can_read_it() -> None:
    async with memory_registry() as registry:
        link = CountingLink({"n1", "n2"})
        inventory = Inventory(registry.db, registry, link)  # type: ignore[arg-type]
        for i in range(6):
            facts = {"tags": ["web"] if i % 3 == 0 else ["db"], "kernel": {"machine": "arm"}}
            await registry.record_status("o", f"n{i}", "online", facts, "x")

        async def found(text: str) -> list[str]:
            link.asked.clear()
            return await inventory.search("o", compile_query(text))

        # no field, a wildcard field, a status that cannot be: never asked
        for text in ("web", "kernel_*:arm", "status:nonsense", "NOT availability:x*"):
            await found(text)
            assert link.asked == [], text
        # asked after the facts' part passed, once per node though two fields read it
        assert await found("status:online AND availability:available AND tags:db") == [
            "n1",
            "n2",
        ]
        assert link.asked == ["n1", "n2", "n4", "n5"]
        # a term without a field that a live value can pass reads it for every node
        assert await found("*line") == ["n0", "n1", "n2", "n3", "n4", "n5"]
        assert len(link.asked) == 6


async def test_a_search_leaves_out_nodes_forgotten_while_it_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inventory_module, "CHUNK", 10)
    async with memory_registry() as registry:
        inventory = Inventory(registry.db, registry, NodeLink(registry))
        for i in range(30):
            await registry.record_status("o", f"n{i:02d}", "online", {"i": 1}, "x")

        async def forget() -> None:
            await trio.lowlevel.checkpoint()  # the search has started its walk
            registry.model.apply({"t": "client.del", "org": "o", "name": "n25"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forget)
            hits = await inventory.search("o", compile_query("i:1"))
        assert hits == [f"n{i:02d}" for i in range(30) if i != 25]


# --- POST jobs with search ------------------------------------------------------------------


def job(**fields: Any) -> dict[str, Any]:
    return {"command": "chef-client", **fields}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (job(nodes=["a"], search="tags:web"), "supply either nodes or search, not both"),
        (job(search=["tags:web"]), "invalid search (expected a string)"),
        (job(search=None), "invalid search (expected a string)"),
        (job(search=""), "invalid search query: empty query at position 0"),
        (job(search="tags:(web"), "invalid search query: unclosed '(' at position 5"),
        (job(search="a", quorum="101%"), "invalid quorum (percentage must be 0% .. 100%)"),
        (job(search="a", quorum=-1), "invalid quorum (must be 0 or more)"),
        (job(search="a", quorum="x"), "invalid type supplied for quorum (expected a number)"),
        (job(), "at least one node must be supplied"),
    ],
)
def test_search_requests_are_checked(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_job_request(body)
    assert info.value.message == message


def test_a_search_takes_its_quorum_from_the_match_count() -> None:
    req = validate_job_request(job(search="tags:web", quorum="50%"))
    assert (req.search, req.nodes, req.quorum_asked) == ("tags:web", (), "50%")
    resolved = with_matches(req, ["a", "b", "c"])
    assert (resolved.nodes, resolved.quorum, resolved.search) == (("a", "b", "c"), 2, "tags:web")
    assert with_matches(validate_job_request(job(search="x")), ["a", "b"]).quorum == 2
    assert with_matches(validate_job_request(job(search="x", quorum=1)), ["a", "b"]).quorum == 1
    with pytest.raises(ValidationError, match=r"invalid quorum \(must be 0 \.\. 2\)"):
        with_matches(validate_job_request(job(search="x", quorum=3)), ["a", "b"])
    with pytest.raises(ValidationError, match=r"matches 3 nodes, at most 2 per job"):
        with_matches(req, ["a", "b", "c"], max_nodes=2)
    with pytest.raises(SearchRequestError) as info:
        with_matches(req, [])
    assert info.value.body() == {"error": ["no nodes match the search"]}


# --- the agent's reporter -------------------------------------------------------------------


class Collections:
    """A collector whose answers the test sets; counts its calls."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.calls = 0
        self.fail: str | None = None

    async def __call__(
        self, config: FactsConfig, *, agent_version: str, node_name: str
    ) -> CollectedFacts:
        self.calls += 1
        await trio.sleep(1.0)  # ohai takes its time
        if self.fail is not None:
            raise AgentError(self.fail)
        return CollectedFacts({**self.facts, "tags": list(config.tags)}, "ohai", 10)


async def test_reporter_sends_changed_facts_only(autojump_clock: trio.testing.MockClock) -> None:
    sent: list[dict[str, Any]] = []
    connected = True

    async def send(facts: dict[str, Any]) -> bool:
        if connected:
            sent.append(facts)
        return connected

    collector = Collections({"platform": "debian", "uptime_seconds": 1})
    reporter = FactsReporter(
        "n", FactsConfig(refresh_interval=60.0, tags=("web",)), send, collect=collector
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        assert collector.calls == 1  # collected before start-up ends
        hello = reporter.hello_facts()
        assert hello == {"platform": "debian", "uptime_seconds": 1, "tags": ["web"]}
        await reporter.attached()
        assert sent == []  # what hello said
        collector.facts["uptime_seconds"] = 61
        await trio.sleep(61)  # the refresh: uptime alone is no change
        assert (collector.calls, sent) == (2, [])
        reporter.config = FactsConfig(refresh_interval=60.0, tags=("web", "canary"))
        reporter.request()
        reporter.request()  # requests while one is pending: one collection
        await trio.sleep(1.5)
        assert collector.calls == 3
        assert [f["tags"] for f in sent] == [["web", "canary"]]
        # a failing refresh keeps the last facts
        collector.fail = "ohai (/usr/bin/ohai) exited with status 1: boom"
        reporter.request()
        await trio.sleep(1.5)
        assert reporter.facts["tags"] == ["web", "canary"]
        # a change while disconnected goes out with the next hello, not as a frame
        collector.fail = None
        reporter.detached()
        connected = False
        reporter.config = FactsConfig(refresh_interval=60.0, tags=("db",))
        reporter.request()
        await trio.sleep(1.5)
        connected = True
        assert reporter.hello_facts()["tags"] == ["db"]
        await reporter.attached()
        assert len(sent) == 1
        nursery.cancel_scope.cancel()


async def test_reporter_start_fails_when_ohai_must_run_and_cannot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    collector = Collections({})
    collector.fail = 'facts.ohai is "on" but ohai is not on PATH'

    async def send(facts: dict[str, Any]) -> bool:
        return True

    reporter = FactsReporter("n", FactsConfig(ohai="on"), send, collect=collector)
    with pytest.RaisesGroup(pytest.RaisesExc(AgentError, match="not on PATH")):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run)


async def test_runtime_reload_frame_collects_again_with_the_new_settings(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('tags = ["web"]\n[facts]\nohai = "off"\n')
    collector = Collections({"platform": "debian"})

    async def inline(function: Any, *args: Any) -> Any:
        return function(*args)

    runtime = AgentRuntime(
        node_name="n",
        whitelist=Whitelist.from_entries(()),
        state_file=StateFile(tmp_path / "state"),
        config_path=str(config),
        facts_config=load_agent_config(config).facts,
        collect=collector,
        run_blocking=inline,
    )
    frames: list[Any] = []

    class Link:
        async def send(self, cls: type[protocol.Frame], **fields: Any) -> bool:
            frames.append(protocol.decode(protocol.encode(cls(seq=1, ts=time.time(), **fields))))
            return True

    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        link = Link()
        assert runtime.hello_fields()["facts"]["tags"] == ["web"]
        welcome = protocol.Welcome(
            server_incarnation_id="s",
            heartbeat_interval=1.0,
            offline_threshold=3,
            voting_timeout=5.0,
            max_output_bytes=1024,
            seq=1,
            ts=0.0,
        )
        await runtime.attach(link, welcome)
        config.write_text('tags = ["db"]\n[facts]\nohai = "off"\n')
        await runtime.handle(protocol.Reload(seq=2, ts=0.0))
        await trio.sleep(2)
        assert [f.facts["tags"] for f in frames if isinstance(f, protocol.Facts)] == [["db"]]
        nursery.cancel_scope.cancel()


# --- the agent's configuration --------------------------------------------------------------


def test_agent_example_file_holds_the_default_facts_settings() -> None:
    config = load_agent_config(CONFIG_DIR / "agent.example.toml")
    assert config.facts == FactsConfig()


def test_facts_settings_from_file_and_environment() -> None:
    file = {
        "tags": ["web", "eu"],
        "environment": "production",
        "roles": ["base"],
        "facts": {
            "ohai": "off",
            "refresh_interval": 60,
            "attributes": {"rack": "r1", "app": {"ports": [80, 443]}},
        },
    }
    config = build_agent_config(file)
    facts = config.facts
    assert (facts.tags, facts.environment, facts.roles) == (("web", "eu"), "production", ("base",))
    assert (facts.ohai, facts.refresh_interval) == ("off", 60.0)
    assert facts.attributes["app"]["ports"] == (80, 443)
    env = {
        "PUSHY_TAGS": "db, blue",
        "PUSHY_ENVIRONMENT": "staging",
        "PUSHY_FACTS_OHAI": "on",
        "PUSHY_FACTS_REFRESH_INTERVAL": "5",
    }
    facts = build_agent_config(file, environ=env).facts
    assert (facts.tags, facts.environment, facts.ohai) == (("db", "blue"), "staging", "on")
    assert facts.refresh_interval == 5.0 and facts.attributes["rack"] == "r1"
    assert build_agent_config(None, environ={"PUSHY_ROLES": "a"}).facts.roles == ("a",)
    assert AgentConfig().facts == FactsConfig()


@pytest.mark.parametrize(
    ("file", "environ", "needle"),
    [
        ({"facts": {"ohia": "on"}}, {}, "unknown key(s): facts.ohia"),
        ({"facts": {"ohai": "sometimes"}}, {}, "facts.ohai: must be auto, on or off"),
        ({"facts": "on"}, {}, "facts: expected a table"),
        ({"tags": "web"}, {}, "tags: expected a list of strings"),
        ({"facts": {"attributes": {"platform": "x"}}}, {}, "facts.attributes.platform"),
        ({}, {"PUSHY_FACTS_REFRESH_INTERVAL": "soon"}, "expected a number"),
        ({}, {"PUSHY_FACTS_ATTRIBUTES": "x"}, "facts.attributes is set in the file only"),
        ({}, {"PUSHY_FACTS_OHAI": "maybe"}, "facts.ohai: must be auto, on or off"),
    ],
)
def test_facts_settings_errors_name_the_key(
    file: dict[str, Any], environ: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_agent_config(file, environ=environ)
    assert needle in str(info.value)
