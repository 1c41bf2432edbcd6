"""Test helpers: an in-process appliance on port 0, a signed HTTP client, and a node registry
or a whole job engine (registry, link, feeds, runner) on an in-memory store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushy_appliance import chef_auth, protocol
from pushy_appliance.appliance import ServerInfo, serve
from pushy_appliance.config import ServerConfig
from pushy_appliance.config_files import load_server_config
from pushy_appliance.db import Database
from pushy_appliance.feeds import Feeds
from pushy_appliance.hub import Hub
from pushy_appliance.jobs.model import JobsModel
from pushy_appliance.jobs.runner import JobRunner
from pushy_appliance.nodes.link import NodeLink
from pushy_appliance.nodes.model import NodeModel
from pushy_appliance.nodes.registry import NodeRegistry
from pushy_appliance.store import open_store


def test_config(data_dir: Path, **flags: Any) -> ServerConfig:
    """A server config on 127.0.0.1 port 0 with fast heartbeats, for tests."""
    base = {"data_dir": str(data_dir), "listen": "127.0.0.1:0"}
    base.update(flags)
    return load_server_config(
        environ={"PUSHY_HEARTBEAT_INTERVAL": "0.5", "PUSHY_LOG_LEVEL": "debug"}, flags=base
    )


test_config.__test__ = False  # type: ignore[attr-defined]


@asynccontextmanager
async def running_server(config: ServerConfig) -> AsyncIterator[ServerInfo]:
    """The whole appliance in-process; cancelled (hard stop) on exit."""
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(serve, config)
        try:
            yield info
        finally:
            nursery.cancel_scope.cancel()


_LAST_SIGNED: dict[tuple[str, str, str, bytes], int] = {}


def signing_time(user: str, method: str, path: str, body: bytes) -> datetime:
    """The timestamp to sign a request with: now, or for the same state-changing request
    (principal, method, path, body) signed before in this second or later, one second after
    that one. Chef timestamps have one-second resolution, so the same request signed twice
    in a second carries the same signature, which the server refuses as a replay
    (``replay``); the server accepts timestamps up to 15 minutes ahead."""
    now = datetime.now(UTC)
    if method.upper() in ("GET", "HEAD", "OPTIONS"):
        return now
    second = int(now.timestamp())
    key = (user, method.upper(), path.split("?", 1)[0], hashlib.sha256(body).digest())
    last = _LAST_SIGNED.get(key)
    if last is not None and last >= second:
        second = last + 1
    _LAST_SIGNED[key] = second
    return datetime.fromtimestamp(second, UTC)


class Signed:
    """A signed JSON client for one principal against a running appliance."""

    def __init__(
        self, http: httpx.AsyncClient, base: str, user: str, key: rsa.RSAPrivateKey
    ) -> None:
        self.http = http
        self.base = base
        self.user = user
        self.key = key

    @classmethod
    def from_file(cls, http: httpx.AsyncClient, base: str, user: str, path: Path) -> Signed:
        return cls(http, base, user, chef_auth.load_private_key(path.read_bytes()))

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        version: str = "1.3",
    ) -> httpx.Response:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        h = chef_auth.sign_request(
            method,
            path,
            data,
            self.user,
            self.key,
            version=version,
            timestamp=signing_time(self.user, method, path, data),
        )
        if data:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return await self.http.request(method, self.base + path, content=data or None, headers=h)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return await self.request("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)


@asynccontextmanager
async def admin_client(info: ServerInfo, user: str = "admin") -> AsyncIterator[Signed]:
    """A :class:`Signed` client as ``admin`` (or ``pivotal``) trusting the data dir's CA."""
    ca = info.data_dir / "tls" / "ca.pem"
    verify: Any = False
    if info.url.startswith("https"):
        verify = ssl.create_default_context(cafile=str(ca))
    async with httpx.AsyncClient(verify=verify, timeout=30) as http:
        yield Signed.from_file(http, info.url, user, info.data_dir / "keys" / f"{user}.pem")


def idle_hello() -> protocol.Hello:
    """The ``hello`` of an idle agent holding nothing."""
    return protocol.Hello(
        incarnation_id="i",
        protocol_version=1,
        agent_version="t",
        job_id=None,
        job_state="idle",
        pending_result=None,
        facts={},
        seq=1,
        ts=time.time(),
    )


@asynccontextmanager
async def memory_registry(
    *, interval: float = 10.0, offline_threshold: int = 3
) -> AsyncIterator[NodeRegistry]:
    """A node registry (server incarnation ``srv``) on an in-memory store."""
    async with open_store(None) as store:
        db = Database(store, {"nodes": NodeModel()})
        yield NodeRegistry(db, "srv", interval=interval, offline_threshold=offline_threshold)


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=…``, e.g. ``"1m"``) mounted at ``path`` for a real
    full disk; the test is skipped where mounting is not allowed (not root, no mount rights
    in the container)."""
    path.mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)]
    try:
        mounted = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


EPOCH = 1_700_000_000.0
"""Wall-clock time of trio time 0 in :func:`memory_engine` (its clock follows trio's)."""


@dataclasses.dataclass
class Engine:
    """A job engine on an in-memory store, its clock ``EPOCH + trio.current_time()``."""

    db: Database
    registry: NodeRegistry
    link: NodeLink
    feeds: Feeds
    runner: JobRunner

    @property
    def jobs(self) -> JobsModel:
        return self.runner.model


@asynccontextmanager
async def memory_engine(
    *,
    interval: float = 10.0,
    voting_timeout: float = 60.0,
    reconnect_grace: float = 30.0,
    late_result_timeout: float = 30.0,
) -> AsyncIterator[Engine]:
    """The job runner with its registry, link and feeds, running (resumed, ready) on an
    in-memory store; on trio's autojump clock its timers are exact."""

    def now() -> float:
        return EPOCH + trio.current_time()

    async with open_store(None) as store:
        db = Database(store, {"nodes": NodeModel(), "jobs": JobsModel()})
        registry = NodeRegistry(db, "srv", interval=interval, offline_threshold=3)
        link = NodeLink(registry, now=now)
        feeds = Feeds(Hub(), org_retention=60.0, now=now)
        runner = JobRunner(
            db,
            registry,
            link,
            feeds,
            voting_timeout=voting_timeout,
            reconnect_grace=reconnect_grace,
            late_result_timeout=late_result_timeout,
            now=now,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            yield Engine(db, registry, link, feeds, runner)
            nursery.cancel_scope.cancel()
