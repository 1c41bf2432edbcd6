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

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from test_e2e_foundation import ServerProcess, pushy_env, pushy_serve, run_pushy

__all__ = ["appliances", "join"]

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
