"""``run_sandbox()``: the server and N local agents in one process, to try the appliance.

What ``pushy sandbox`` runs (``docs/DASHBOARD.md``, "The sandbox"):

* the server (:func:`appliance.serve`) on a loopback address only, over plain HTTP (TLS adds
  nothing on loopback, and a browser then reaches the dashboard with no certificate warning:
  ``http://127.0.0.1`` and ``http://localhost`` are secure contexts, so the ``Secure`` session
  cookie works there);
* N agents (:func:`agent.main.run_agent`) named ``sandbox-1`` … ``sandbox-N``, each with its own
  client key and state directory under ``DATA/sandbox/``, and a whitelist that allows **any**
  command (run by ``/bin/sh -c``, as the user running the sandbox). That is why the listener
  must be a loopback address (:func:`sandbox_config` refuses any other).

Clients are created (or re-created, when the key on disk changed) through the API as the
bootstrap admin, so a data directory is reused from one run to the next.

Start-up: ``task_status.started(SandboxInfo)`` once every agent is available and a login link
is minted. Shutdown (``stop`` set): the agents stop first (a running job's processes are
killed), then the server stops gracefully. Cancellation is the hard stop, as for ``serve()``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import trio

from . import chef_auth, fsutil
from .agent.main import run_agent
from .appliance import ServerInfo, serve
from .bootstrap import ADMIN
from .client import Credentials, PushyClient, open_client
from .config import AgentConfig, AllowEntry, ServerConfig, build_server_config, parse_host_port
from .config_files import resolve_data_dir, sandbox_data_dir
from .errors import AgentError, ConfigError
from .facts import FactsConfig
from .nodes.link import NodeLink

__all__ = [
    "ALLOW_ANY",
    "DEFAULT_LISTEN",
    "MAX_NODES",
    "SandboxInfo",
    "mint_login_link",
    "node_names",
    "run_sandbox",
    "sandbox_config",
]

log = logging.getLogger(__name__)

DEFAULT_LISTEN: Final = "127.0.0.1:10003"
MAX_NODES: Final = 100
ALLOW_ANY: Final = (AllowEntry(pattern=r"(?s).+", shell=True),)
"""The sandbox agents' whitelist: every command, under ``/bin/sh -c``."""
READY_TIMEOUT: Final = 60.0
"""Seconds the agents have to connect before the sandbox gives up."""


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What :func:`run_sandbox` reports once it is ready.

    Attributes:
        server: the server's own report.
        org_url: the org URL the CLI and agents use.
        nodes: the agents' node names.
        login_url: a one-time dashboard login link (valid ``link_ttl`` seconds).
        link_ttl: how long ``login_url`` stays valid.
    """

    server: ServerInfo
    org_url: str
    nodes: tuple[str, ...]
    login_url: str
    link_ttl: float

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir


def node_names(count: int) -> tuple[str, ...]:
    """``sandbox-1`` … ``sandbox-COUNT``."""
    return tuple(f"sandbox-{i}" for i in range(1, count + 1))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_loopback(listen: str, source: str) -> str:
    host, _port = parse_host_port(listen, key="listen", source=source)
    if not _is_loopback(host):
        raise ConfigError(
            source,
            "listen",
            f"the sandbox listens on a loopback address only (127.0.0.1, ::1, localhost), "
            f"not {host}: its agents run any command they are sent",
        )
    return host


def sandbox_config(
    *,
    listen: str | None = None,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    **settings: object,
) -> ServerConfig:
    """The sandbox server's configuration: plain HTTP on a loopback address.

    Args:
        listen: ``HOST:PORT`` of the API (default :data:`DEFAULT_LISTEN`); the node listener
            takes a free port on the same host.
        data_dir: the data directory (default :func:`config_files.sandbox_data_dir`).
        environ: where the default data directory is looked up.
        settings: further dotted configuration keys (the tests use them).

    Raises:
        ConfigError: ``listen`` is malformed or not a loopback address.
    """
    listen = listen or DEFAULT_LISTEN
    host = _require_loopback(listen, "--listen")
    node_host = f"[{host}]" if ":" in host else host
    return build_server_config(
        flags={
            **settings,
            "listen": listen,
            "node_listen": f"{node_host}:0",
            "data_dir": data_dir or str(sandbox_data_dir(environ)),
            "insecure_http": True,
        }
    )


def _key_file(path: Path) -> str:
    """The public key of the private key file ``path``, made (0600) when absent."""
    if path.exists():
        key = chef_auth.load_private_key(path.read_bytes())
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = chef_auth.generate_private_key()
        fsutil.write_durably(path, chef_auth.private_key_pem(key).encode(), mode=0o600)
    return chef_auth.public_key_pem(key)


async def _client_keys(
    client: PushyClient, keys_dir: Path, names: Sequence[str]
) -> dict[str, Path]:
    """A key file per node, its client created (or re-created) with that key."""
    out: dict[str, Path] = {}
    for name in names:
        path = keys_dir / f"{name}.pem"
        public = await trio.to_thread.run_sync(_key_file, path)
        clients = client.org_path("clients")
        body = {"name": name, "public_key": public}
        response = await client.request("POST", clients, body, ok=(201, 409))
        if response.status_code == 409:
            existing = await client.json("GET", f"{clients}/{name}")
            if existing.get("public_key") != public:
                await client.request("DELETE", f"{clients}/{name}")
                await client.request("POST", clients, body)
        out[name] = path
    return out


def _agent_config(org_url: str, name: str, key: Path, state_dir: Path) -> AgentConfig:
    # Every sandbox node has the tag "sandbox" (pushy job start … --search tags:sandbox). The
    # agents share this machine: their facts are computed without ohai, whose run of a few
    # seconds per agent would only repeat the same answer.
    return AgentConfig(
        server_url=org_url,
        node_name=name,
        client_key=str(key),
        state_dir=str(state_dir),
        allow=ALLOW_ANY,
        facts=FactsConfig(ohai="off", tags=("sandbox",)),
    )


async def _wait_available(link: NodeLink, org: str, names: Sequence[str]) -> None:
    """Return once every node is connected and available."""
    # The link has no availability event to wait on: at start-up only, look every 50 ms.
    while not all(link.is_available(org, n) for n in names):  # noqa: ASYNC110
        await trio.sleep(0.05)


async def mint_login_link(client: PushyClient) -> tuple[str, float]:
    """A one-time dashboard login link for ``client``'s principal and org, and its lifetime."""
    doc = await client.json("POST", client.org_path("pushy/ui/links"))
    return str(doc["url"]), float(doc["expires_in"])


async def run_sandbox(
    config: ServerConfig,
    nodes: int = 3,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[SandboxInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server and ``nodes`` agents until ``stop`` is set (or the caller cancels).

    Args:
        config: the server configuration (see :func:`sandbox_config`); its ``listen`` must be
            a loopback address.
        nodes: how many agents (1 … :data:`MAX_NODES`).
        stop: set it to stop the agents, then the server, gracefully.

    Start-up: ``task_status.started(SandboxInfo)`` once every agent is available.

    Raises:
        ConfigError: a non-loopback ``listen``, or ``nodes`` out of range.
        AgentError: the agents did not connect in time.
        StoreError: the data directory cannot be used.
    """
    _require_loopback(config.listen, "config")
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError("--nodes", None, f"must be 1 … {MAX_NODES}, got {nodes}")
    stop = stop if stop is not None else trio.Event()
    names = node_names(nodes)
    org = config.bootstrap.org
    server_stop = trio.Event()
    log.warning(
        "sandbox: agents %s … %s run ANY command they are sent (whitelist %r, shell)",
        names[0],
        names[-1],
        ALLOW_ANY[0].pattern,
    )
    async with trio.open_nursery() as nursery:
        server: ServerInfo = await nursery.start(functools.partial(serve, config, stop=server_stop))
        data_dir = resolve_data_dir(config.data_dir)
        home = data_dir / "sandbox"
        org_url = f"{server.url}/organizations/{org}"
        admin = Credentials(org_url, ADMIN, str(data_dir / "keys" / f"{ADMIN}.pem"))
        async with open_client(admin) as client:
            keys = await _client_keys(client, home / "keys", names)
        async with trio.open_nursery() as agents:
            for name in names:
                settings = _agent_config(org_url, name, keys[name], home / "agents" / name)
                await agents.start(functools.partial(run_agent, settings, handle_sighup=False))
            with trio.move_on_after(READY_TIMEOUT):
                await _wait_available(server.services.link, org, names)
            missing = [n for n in names if not server.services.link.is_available(org, n)]
            if missing:
                raise AgentError(
                    f"sandbox agents not connected after {READY_TIMEOUT:.0f} s: "
                    + ", ".join(missing)
                )
            async with open_client(admin) as client:
                url, ttl = await mint_login_link(client)
            log.info("sandbox ready: %d node(s) on %s", nodes, server.url)
            task_status.started(SandboxInfo(server, org_url, names, url, ttl))
            await stop.wait()
            agents.cancel_scope.cancel()
        server_stop.set()
