"""End-to-end acceptance of the foundation (issue 2): the real ``pushy`` command in subprocesses,
real sockets on 127.0.0.1, real files.

Also home of :class:`ServerProcess` and :func:`run_pushy`, which ``test_cli_admin.py`` uses.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushy_appliance import chef_auth

from helpers import Signed, signing_time

PUSHY = (sys.executable, "-m", "pushy_appliance.cli")
READY_TIMEOUT = 20.0
CLIENTS = "/organizations/default/clients"


def pushy_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a ``pushy`` subprocess: ours without ``PUSHY_*``, ``HOME`` moved
    to ``home`` so no real ``~/.chef/credentials`` is read, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHY_")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env.pop("XDG_DATA_HOME", None)
    env.update(extra)
    return env


async def run_pushy(
    *args: str, env: Mapping[str, str], cwd: Path, limit: float = 30.0
) -> subprocess.CompletedProcess[bytes]:
    """Run ``pushy ARGS`` to completion within ``limit`` seconds; stdout and stderr captured,
    exit code not checked."""
    with trio.fail_after(limit):
        return await trio.run_process(
            [*PUSHY, *args],
            env=dict(env),
            cwd=str(cwd),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


class ServerProcess:
    """A ``pushy serve`` subprocess, its log file and its ready document.

    Attributes:
        data_dir: the data directory.
        doc: ``run/server.json`` as this process wrote it (set by :meth:`wait_ready`).
    """

    def __init__(self, process: trio.Process, data_dir: Path, log_path: Path) -> None:
        self.process = process
        self.data_dir = data_dir
        self.log_path = log_path
        self.doc: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return str(self.doc["url"])

    @property
    def server_json(self) -> Path:
        return self.data_dir / "run" / "server.json"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self) -> dict[str, Any]:
        """Wait until this process (not a killed predecessor) has written ``run/server.json``.

        Raises:
            AssertionError: the process exited first (its log is in the message).
            trio.TooSlowError: not ready within ``READY_TIMEOUT``.
        """
        with trio.fail_after(READY_TIMEOUT):
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"pushy serve exited with {self.process.returncode}:\n{self.log()}"
                    )
                try:
                    doc = json.loads(self.server_json.read_text())
                except (FileNotFoundError, ValueError):
                    doc = None
                if isinstance(doc, dict) and doc.get("pid") == self.process.pid:
                    self.doc = doc
                    return doc
                await trio.sleep(0.02)

    async def wait(self, limit: float = 20.0) -> int:
        """Wait up to ``limit`` seconds for the process to exit; return its exit code."""
        with trio.fail_after(limit):
            return await self.process.wait()

    async def terminate(self) -> int:
        """SIGTERM and wait; return the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await self.wait()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data_dir / "tls" / "ca.pem"))

    @asynccontextmanager
    async def signed(
        self, user: str = "admin", key: Path | None = None, **kw: Any
    ) -> AsyncIterator[Signed]:
        """A :class:`Signed` client for ``user`` trusting the data dir's CA; its key is ``key``,
        else the data dir's ``keys/USER.pem``."""
        key = key or self.data_dir / "keys" / f"{user}.pem"
        async with httpx.AsyncClient(verify=self.ssl_context(), timeout=30, **kw) as http:
            yield Signed.from_file(http, self.url, user, key)


@asynccontextmanager
async def pushy_serve(
    tmp_path: Path,
    *args: str,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready: bool = True,
) -> AsyncIterator[ServerProcess]:
    """Start ``pushy serve ARGS`` and (with ``ready``) wait until it is ready.

    With ``data_dir``, ``--data-dir DATA_DIR --listen 127.0.0.1:0`` are added. The process's
    output goes to a log file under ``tmp_path/logs``; it is killed on exit if still running.
    """
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"serve-{len(list(logs.iterdir()))}.log"
    argv = [*PUSHY, "serve", *args]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
    log_file = await trio.Path(log_path).open("wb")
    try:
        process = await trio.lowlevel.open_process(
            argv,
            stdout=log_file.wrapped,
            stderr=subprocess.STDOUT,
            env=dict(env if env is not None else pushy_env(tmp_path / "home")),
            cwd=str(tmp_path),
        )
    finally:
        await log_file.aclose()
    server = ServerProcess(process, data_dir or Path(), log_path)
    try:
        if ready:
            await server.wait_ready()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        with trio.move_on_after(10) as scope:
            scope.shield = True
            await process.wait()


# --- a. serve, status over verified TLS, SIGTERM ------------------------------------------------


async def test_serve_on_port_zero_status_over_tls_and_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with pushy_serve(tmp_path, data_dir=data) as server:
        doc = server.doc
        assert doc["url"].startswith("https://127.0.0.1:")
        assert doc["node_url"].startswith("wss://127.0.0.1:")
        assert not doc["url"].endswith(":0") and not doc["node_url"].endswith(":0")
        async with httpx.AsyncClient(verify=server.ssl_context(), timeout=10) as http:
            with trio.fail_after(10):
                r = await http.get(server.url + "/pushy/_status")
        assert r.status_code == 200
        status = r.json()
        assert status["status"] == "it's alive"
        assert status["incarnation_id"] == doc["incarnation_id"]
        assert status["version"] == doc["version"]
        # the same server refuses a client that trusts only the system's CAs
        async with httpx.AsyncClient(verify=ssl.create_default_context(), timeout=10) as http:
            with trio.fail_after(10), pytest.raises(httpx.ConnectError):
                await http.get(server.url + "/pushy/_status")
        assert await server.terminate() == 0, server.log()
        assert not server.server_json.exists()
        assert "serving " + server.url in server.log()


# --- b. kill -9 during a burst of creations -----------------------------------------------------


class _OneShotBody(httpx.AsyncByteStream):
    """A request body that is not an async generator.

    httpx's own body stream is one; when the server dies mid-request it is left unfinished,
    and trio's finalizer then warns at garbage collection (an error under pytest).
    """

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _OneShotBody:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data

    async def aclose(self) -> None:
        self._data = None


async def _post_signed(
    http: httpx.AsyncClient, url: str, path: str, doc: Any, user: str, key: Any
) -> httpx.Response:
    data = json.dumps(doc).encode()
    headers = chef_auth.sign_request(
        "POST", path, data, user, key, timestamp=signing_time(user, "POST", path, data)
    )
    headers["Content-Type"] = "application/json"
    request = http.build_request("POST", url + path, content=data, headers=headers)
    request.stream = _OneShotBody(data)
    return await http.send(request)


async def test_kill_9_during_a_burst_loses_no_acknowledged_client(tmp_path: Path) -> None:
    data = tmp_path / "data"
    total, kill_after, workers = 1000, 500, 32
    public_key = chef_auth.public_key_pem(chef_auth.generate_private_key())
    acked: set[str] = set()
    attempted: set[str] = set()
    refused: list[str] = []
    async with pushy_serve(tmp_path, data_dir=data) as server:
        key = chef_auth.load_private_key((data / "keys" / "admin.pem").read_bytes())
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with httpx.AsyncClient(
            verify=server.ssl_context(), limits=limits, timeout=30
        ) as http:
            names = iter(f"burst-{i:04d}" for i in range(total))
            killed = False

            async def worker() -> None:
                nonlocal killed
                for name in names:
                    if killed:
                        return
                    attempted.add(name)
                    doc = {"name": name, "public_key": public_key}
                    try:
                        r = await _post_signed(http, server.url, CLIENTS, doc, "admin", key)
                    except httpx.TransportError:
                        assert killed, "a request failed before the kill"
                        return
                    if r.status_code != 201:
                        refused.append(f"{name}: {r.status_code} {r.text}")
                        continue
                    acked.add(name)
                    if len(acked) >= kill_after and not killed:
                        killed = True
                        server.process.kill()

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for _ in range(workers):
                        nursery.start_soon(worker)
        assert await server.wait() == -signal.SIGKILL
    assert not refused, refused[:5]
    assert kill_after <= len(acked) < total
    # the killed server left its ready file behind; the restart replaces it
    async with pushy_serve(tmp_path, data_dir=data) as server, server.signed() as admin:
        with trio.fail_after(10):
            r = await admin.get(CLIENTS)
        assert r.status_code == 200
        present = set(r.json())
        assert acked <= present, sorted(acked - present)[:10]
        assert present <= attempted
        # the store takes new writes after recovery
        with trio.fail_after(10):
            r = await admin.post(CLIENTS, {"name": "after-restart", "public_key": public_key})
        assert r.status_code == 201, r.text
        assert await server.terminate() == 0, server.log()
    done = await run_pushy(
        "store", "verify", "--data-dir", str(data), env=pushy_env(tmp_path / "home"), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert ": OK" in done.stdout.decode()


# --- c. no arguments ----------------------------------------------------------------------------


def _listening_on_any(port: int) -> bool:
    """Whether something listens on 0.0.0.0:``port`` (Linux ``/proc/net/tcp``)."""
    wanted = f"00000000:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return True
    return False


async def test_serve_with_no_arguments_serves_https_on_all_interfaces_10003(
    tmp_path: Path,
) -> None:
    """``pushy serve`` and nothing else (the data dir from ``PUSHY_DATA_DIR``). Ports 10003
    and 10002 must be free on this machine: if they are not, this fails, it does not skip."""
    data = tmp_path / "data"
    env = pushy_env(tmp_path / "home", PUSHY_DATA_DIR=str(data))
    async with pushy_serve(tmp_path, env=env, ready=False) as server:
        server.data_dir = data
        await server.wait_ready()
        assert server.doc["url"] == "https://127.0.0.1:10003"
        assert server.doc["node_url"] == "wss://127.0.0.1:10002"
        assert _listening_on_any(10003), "the API does not listen on 0.0.0.0:10003"
        assert _listening_on_any(10002), "the node listener does not listen on 0.0.0.0:10002"
        # the log says what was really bound, not only the loopback URL clients dial
        assert (
            "serving https://127.0.0.1:10003 on 0.0.0.0:10003"
            " (nodes wss://127.0.0.1:10002 on 0.0.0.0:10002)"
        ) in server.log(), server.log()
        async with httpx.AsyncClient(verify=server.ssl_context(), timeout=10) as http:
            with trio.fail_after(10):
                r = await http.get("https://localhost:10003/pushy/_status")
        assert r.status_code == 200
        assert r.json()["status"] == "it's alive"
        creds = (data / "credentials").read_text()
        assert 'chef_server_url = "https://127.0.0.1:10003/organizations/default"' in creds
        assert await server.terminate() == 0, server.log()


# --- d. a restart keeps identity ------------------------------------------------------------------


async def test_restart_keeps_identity_and_rewrites_credentials(tmp_path: Path) -> None:
    data = tmp_path / "data"
    public_key = chef_auth.public_key_pem(chef_auth.generate_private_key())
    async with pushy_serve(tmp_path, data_dir=data) as first, first.signed("pivotal") as piv:
        for path, body in (
            (CLIENTS, {"name": "keep-1", "public_key": public_key}),
            (CLIENTS, {"name": "keep-2", "public_key": public_key}),
            ("/organizations", {"name": "acme"}),
            ("/users", {"username": "carol", "public_key": public_key}),
        ):
            with trio.fail_after(10):
                r = await piv.post(path, body)
            assert r.status_code == 201, r.text
        incarnation = first.doc["incarnation_id"]
        assert await first.terminate() == 0, first.log()
    keys_before = {p.name: p.read_bytes() for p in (data / "keys").iterdir()}
    ca_before = (data / "tls" / "ca.pem").read_bytes()
    # a stale file proves the next start rewrites it
    (data / "credentials").write_text('[default]\nchef_server_url = "https://127.0.0.1:1/x"\n')
    async with pushy_serve(tmp_path, data_dir=data) as second, second.signed() as admin:
        assert second.doc["incarnation_id"] != incarnation
        creds = (data / "credentials").read_text()
        assert f'chef_server_url = "{second.url}/organizations/default"' in creds
        assert f'ssl_ca_file = "{data / "tls" / "ca.pem"}"' in creds
        assert f'client_key = "{data / "keys" / "admin.pem"}"' in creds
        with trio.fail_after(10):
            r = await admin.get(CLIENTS)
            assert set(r.json()) == {"keep-1", "keep-2"}
        async with second.signed("pivotal") as piv:
            with trio.fail_after(10):
                r = await piv.get("/organizations")
                assert set(r.json()) == {"default", "acme"}
                r = await piv.get("/users/carol")
                assert r.status_code == 200
        assert await second.terminate() == 0, second.log()
    assert {p.name: p.read_bytes() for p in (data / "keys").iterdir()} == keys_before
    assert (data / "tls" / "ca.pem").read_bytes() == ca_before


# --- e. first-start atomicity -------------------------------------------------------------------


async def test_interrupted_first_start_with_keys_only_completes(tmp_path: Path) -> None:
    """Keys written (plus a temp file of an unfinished write), no TLS, empty store, no
    ``bootstrap.done``: the next start keeps the keys and completes the rest."""
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True, mode=0o700)
    pems = {}
    for name in ("pivotal", "admin"):
        pems[name] = chef_auth.private_key_pem(chef_auth.generate_private_key())
        path = data / "keys" / f"{name}.pem"
        path.write_text(pems[name])
        path.chmod(0o600)
    (data / "keys" / "admin.pem.tmp").write_bytes(b"-----BEGIN PRIV")
    (data / "store").mkdir(mode=0o700)
    async with pushy_serve(tmp_path, data_dir=data) as server:
        assert (data / "bootstrap.done").exists()
        for rel in ("tls/ca.pem", "tls/server.pem", "credentials"):
            assert (data / rel).exists(), rel
        for name, pem in pems.items():
            assert (data / "keys" / f"{name}.pem").read_text() == pem
            async with server.signed(name) as who:
                with trio.fail_after(10):
                    r = await who.get("/organizations/default/groups/admins")
                assert r.status_code == 200, (name, r.text)
                assert r.json()["users"] == ["admin"]
        assert await server.terminate() == 0, server.log()


async def test_first_start_interrupted_after_the_records_completes(tmp_path: Path) -> None:
    """Records committed and a CA written, the server certificate and ``bootstrap.done`` not:
    the next start issues the certificate from the same CA, adds no duplicate, and is done."""
    data = tmp_path / "data"
    async with pushy_serve(tmp_path, data_dir=data) as server:
        assert await server.terminate() == 0, server.log()
    for rel in ("bootstrap.done", "tls/server.pem", "tls/server.key", "credentials"):
        (data / rel).unlink()
    ca = (data / "tls" / "ca.pem").read_bytes()
    async with pushy_serve(tmp_path, data_dir=data) as server, server.signed() as admin:
        assert (data / "bootstrap.done").exists()
        assert (data / "tls" / "ca.pem").read_bytes() == ca
        with trio.fail_after(10):
            r = await admin.get("/organizations/default/groups")
        assert set(r.json()) == {"admins", "users", "clients"}
        assert await server.terminate() == 0, server.log()


async def test_a_done_data_dir_with_a_lost_store_is_rejected_clearly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with pushy_serve(tmp_path, data_dir=data) as server:
        assert await server.terminate() == 0, server.log()
    for f in (data / "store").iterdir():
        if f.is_file():
            f.unlink()
    async with pushy_serve(tmp_path, data_dir=data, ready=False) as server:
        code = await server.wait()
        assert code == 1, server.log()
        assert "its store holds no superuser" in server.log()
        assert "Traceback" not in server.log()
        assert not server.server_json.exists()


# --- f. bad input never yields a 500 --------------------------------------------------------------

_ROUTES = [
    ("POST", "/organizations"),
    ("POST", "/users"),
    ("POST", CLIENTS),
    ("POST", "/organizations/default/groups"),
    ("POST", "/organizations/default/users"),
    ("PUT", "/organizations/default/groups/fuzz"),
]
_FIELDS = [
    "name",
    "clientname",
    "username",
    "groupname",
    "full_name",
    "display_name",
    "email",
    "create_key",
    "public_key",
    "admin",
    "actors",
]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", ".", "..", "a/b", "../x", "ok-name", "%2F", "default", "admins"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_bodies = (
    st.fixed_dictionaries({}, optional={f: _json for f in _FIELDS}).map(
        lambda d: json.dumps(d).encode()
    )
    | _json.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {
            "name": st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
            "create_key": st.just(True),
        }
    ).map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
    | st.just(b'{"name": "x", "name": "y"}')
)


def _fuzz(url: str, ctx: ssl.SSLContext, pivotal_pem: bytes) -> tuple[list[int], list[str]]:
    """Post random bodies and get random names, signed as pivotal.

    Returns:
        The number of requests sent, and every response that broke the contract (5xx,
        non-JSON, or a 4xx without an ``error``).
    """
    key = chef_auth.load_private_key(pivotal_pem)
    broken: list[str] = []
    statuses: list[int] = []

    with httpx.Client(verify=ctx, timeout=30) as http:

        def send(method: str, path: str, body: bytes) -> None:
            headers = chef_auth.sign_request(
                method,
                path,
                body,
                "pivotal",
                key,
                timestamp=signing_time("pivotal", method, path, body),
            )
            headers["Content-Type"] = "application/json"
            r = http.request(
                method, url + quote(path, safe="/"), content=body or None, headers=headers
            )
            statuses.append(r.status_code)
            try:
                doc = r.json()
            except ValueError:
                doc = None
            bad = r.status_code >= 500 or doc is None
            bad = bad or (r.status_code >= 400 and not (isinstance(doc, dict) and "error" in doc))
            if bad:
                broken.append(f"{method} {path} {body[:80]!r} -> {r.status_code} {r.text[:200]}")

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(route=st.sampled_from(_ROUTES), body=_bodies)
        def post_random_bodies(route: tuple[str, str], body: bytes) -> None:
            send(route[0], route[1], body)

        @settings(max_examples=30, deadline=None, database=None, derandomize=True)
        @given(
            collection=st.sampled_from(["clients", "groups", "users", "principals"]),
            name=st.text(min_size=1, max_size=30)
            | st.sampled_from(["..", ".", "a..b", "%2e%2e", "x" * 300]),
        )
        def get_random_names(collection: str, name: str) -> None:
            send("GET", f"/organizations/default/{collection}/{name}", b"")

        post_random_bodies()
        get_random_names()
    return statuses, broken


async def test_random_input_to_identity_routes_never_yields_a_500(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with pushy_serve(tmp_path, data_dir=data) as server:
        async with server.signed("pivotal") as piv:
            with trio.fail_after(10):
                r = await piv.post("/organizations/default/groups", {"groupname": "fuzz"})
            assert r.status_code == 201, r.text
        with trio.fail_after(120):
            statuses, broken = await trio.to_thread.run_sync(
                _fuzz,
                server.url,
                server.ssl_context(),
                (data / "keys" / "pivotal.pem").read_bytes(),
            )
        assert not broken, "\n".join(broken[:10])
        assert len(statuses) >= 60
        assert {400, 201} <= set(statuses)  # both refusals and successes were exercised
        assert server.process.poll() is None, server.log()
        async with server.signed() as admin:
            with trio.fail_after(10):
                r = await admin.get("/organizations/default/groups/admins")
            assert r.status_code == 200
            assert "admin" in r.json()["users"]
        assert "internal error" not in server.log()
        assert await server.terminate() == 0, server.log()
