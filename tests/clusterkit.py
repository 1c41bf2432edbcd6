"""Several real appliances on one PostgreSQL database, for the cluster's end-to-end tests
(``docs/SCALE-OUT.md``): ``pushy serve --store URL`` subprocesses on 127.0.0.1 port 0, each
with its own data directory; the first starts alone, the others share its keys and CA by
``pushy cluster join`` before their first start.

    async with appliances(tmp_path, url, 3) as (a, b, c):
        async with a.signed() as admin_a, b.signed() as admin_b:
            ...

Shared by ``test_cluster_e2e.py`` (cluster-log), the jobs-across-appliances tests and the
benchmarks; add helpers as functions of their own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from test_e2e_foundation import ServerProcess, pushy_env, pushy_serve, run_pushy
from test_node_e2e import AGENT, Proc, create_client, spawn, write_key

from pushy_appliance import chef_auth

from helpers import Signed

__all__ = ["agents", "appliances", "join"]

HEARTBEAT = "0.5"
"""The appliances' heartbeat interval (seconds): agents are seen online quickly."""


async def join(first: Path, data_dir: Path, env: Mapping[str, str], cwd: Path) -> None:
    """``pushy cluster join FIRST --data-dir DATA_DIR``: DATA_DIR shares FIRST's keys and CA."""
    done = await run_pushy(
        "cluster", "join", str(first), "--data-dir", str(data_dir), env=env, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    assert b"now shares the keys and CA" in done.stdout, done.stdout


@asynccontextmanager
async def appliances(
    tmp_path: Path, store_url: str, count: int = 3, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[list[ServerProcess]]:
    """``count`` appliances on ``store_url``, all ready (data directories ``tmp_path/app0``…);
    killed on exit if still running.

    Args:
        env: the processes' environment (default: :func:`pushy_env` with a fast heartbeat).
    """
    env = (
        env if env is not None else pushy_env(tmp_path / "home", PUSHY_HEARTBEAT_INTERVAL=HEARTBEAT)
    )
    first = tmp_path / "app0"
    servers: list[ServerProcess] = []
    async with AsyncExitStack() as stack:
        for n in range(count):
            data = tmp_path / f"app{n}"
            if n > 0:
                await join(first, data, env, tmp_path)
            servers.append(
                await stack.enter_async_context(
                    pushy_serve(tmp_path, "--store", store_url, data_dir=data, env=env)
                )
            )
        yield servers


@asynccontextmanager
async def agents(
    tmp_path: Path,
    servers: list[ServerProcess],
    admin: Signed,
    nodes: Mapping[str, int],
    *,
    allow: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, Proc]]:
    """A real ``pushy agent`` per node of ``nodes`` (name → the index of the appliance it
    tries first), given every appliance's URL (``server_urls``, its own first, then the
    others in order), its client created through ``admin``; killed on exit.

    Args:
        allow: the agents' whitelist, pattern → command (default: ``say WORD`` echoes the
            word, ``nap N`` sleeps N seconds).
    """
    allow = (
        allow
        if allow is not None
        else {
            "^say ([a-z]+)$": "/bin/echo \\1",
            "^nap ([0-9]+)$": "/bin/sleep \\1",
        }
    )
    ca = servers[0].data_dir / "tls" / "ca.pem"
    rules = "".join(
        f"[[allow]]\npattern = {json.dumps(p)}\nrun = {json.dumps(r)}\n" for p, r in allow.items()
    )
    procs: dict[str, Proc] = {}
    async with AsyncExitStack() as stack:
        for name, first in nodes.items():
            key = chef_auth.generate_private_key()
            await create_client(admin, name, chef_auth.public_key_pem(key))
            key_file = write_key(tmp_path / f"{name}.pem", chef_auth.private_key_pem(key))
            org = "/organizations/default"
            urls = [s.url + org for s in servers[first:] + servers[:first]]
            config = tmp_path / f"{name}.toml"
            config.write_text(
                f"server_urls = {json.dumps(urls)}\n"
                f"node_name = {json.dumps(name)}\n"
                f"client_key = {json.dumps(str(key_file))}\n"
                f"ca_cert = {json.dumps(str(ca))}\n"
                f"state_dir = {json.dumps(str(tmp_path / f'state-{name}'))}\n"
                f"working_dir = {json.dumps(str(tmp_path))}\n"
                '[log]\nlevel = "debug"\n[facts]\nohai = "off"\n' + rules
            )
            procs[name] = await stack.enter_async_context(
                spawn(f"agent {name}", [*AGENT, "--config", str(config)])
            )
        yield procs
