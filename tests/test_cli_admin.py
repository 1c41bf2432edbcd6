"""The real ``pushy`` admin commands (subprocesses) against a ``pushy serve`` subprocess.

Credentials come from each of their sources in turn: the data directory (``PUSHY_DATA_DIR``),
flags, and a ``~/.chef/credentials`` profile written the way knife's documentation shows
(``HOME`` points into ``tmp_path``, so the developer's own files are never read).
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import trio
from test_e2e_foundation import CLIENTS, ServerProcess, pushy_env, pushy_serve, run_pushy

from pushy_appliance import __version__, chef_auth
from pushy_appliance.store._format import parse_segment_name


def out(done: subprocess.CompletedProcess[bytes]) -> str:
    """Both streams of a finished command, for assertion messages."""
    return (
        f"exit {done.returncode}\nstdout:\n{done.stdout.decode()}\nstderr:\n{done.stderr.decode()}"
    )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def clients_of(server: ServerProcess, org: str) -> set[str]:
    async with server.signed("pivotal") as piv:
        with trio.fail_after(10):
            r = await piv.get(f"/organizations/{org}/clients")
    assert r.status_code == 200, r.text
    return set(r.json())


async def run_all(
    env: dict[str, str],
    cwd: Path,
    *commands: tuple[str, ...],
    extra_env: dict[int, dict[str, str]] | None = None,
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run independent ``pushy`` commands at the same time; results in the given order.

    ``extra_env`` maps a command's index to variables added to its environment.
    """
    results: list[subprocess.CompletedProcess[bytes] | None] = [None] * len(commands)
    extra = extra_env or {}

    async def one(index: int, args: tuple[str, ...]) -> None:
        results[index] = await run_pushy(*args, env=env | extra.get(index, {}), cwd=cwd)

    async with trio.open_nursery() as nursery:
        for index, args in enumerate(commands):
            nursery.start_soon(one, index, args)
    return [r for r in results if r is not None]


# --- no server needed -------------------------------------------------------------------------


async def test_version_prints_ours_and_the_library_versions(tmp_path: Path) -> None:
    env = pushy_env(tmp_path / "home")
    done = await run_pushy("version", env=env, cwd=tmp_path)
    assert done.returncode == 0, out(done)
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"pushy {__version__}"
    assert f"python {sys.version.split()[0]}" in lines
    for dist in ("trio", "hypercorn", "quart-trio", "cryptography", "msgpack"):
        assert f"{dist} {metadata.version(dist)}" in lines, dist
    # the console script that `pip install` made is the same program
    script = shutil.which("pushy")
    if script is None:
        pytest.fail("the `pushy` console script is not installed (pip install -e .)")
    with trio.fail_after(30):
        same = await trio.run_process(
            [script, "version"], env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    assert (same.returncode, same.stdout) == (0, done.stdout), same.stderr.decode()


USAGE_ERRORS: list[tuple[tuple[str, ...], str]] = [
    ((), "COMMAND"),
    (("frobnicate",), "invalid choice"),
    (("client",), "ACTION"),
    (("client", "create"), "NAME"),
    (("client", "create", "x", "--bogus"), "unrecognized arguments"),
    (("group", "add", "ops"), "at least one --user, --client or --group"),
    (("serve", "--listen", "no-port-here"), "expected HOST:PORT"),
]


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    results = await run_all(pushy_env(tmp_path / "home"), tmp_path, *(a for a, _ in USAGE_ERRORS))
    for (args, needle), done in zip(USAGE_ERRORS, results, strict=True):
        assert done.returncode == 2, (args, out(done))
        assert needle in done.stderr.decode(), (args, out(done))
        assert "Traceback" not in done.stderr.decode(), args


async def test_no_credentials_anywhere_is_a_usage_error(tmp_path: Path) -> None:
    env = pushy_env(tmp_path / "home")
    done = await run_pushy(
        "client", "create", "x", "--data-dir", str(tmp_path / "empty"), env=env, cwd=tmp_path
    )
    assert done.returncode == 2, out(done)
    assert "no server URL, user, key found" in done.stderr.decode(), out(done)


async def test_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    url = f"https://127.0.0.1:{closed_port()}/organizations/default"
    home = tmp_path / "home"
    env = pushy_env(home)
    # from flags
    done = await run_pushy(
        "client", "create", "x", "--server", url, "--user", "admin", "--key", str(key),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, out(done)
    assert f"cannot reach {url.rsplit('/organizations', 1)[0]}" in done.stderr.decode()
    # from a knife profile
    (home / ".chef").mkdir()
    (home / ".chef" / "credentials").write_text(
        f'[default]\nclient_name = "admin"\nclient_key = "{key}"\nchef_server_url = "{url}"\n'
    )
    done = await run_pushy("group", "show", "admins", env=env, cwd=tmp_path)
    assert done.returncode == 3, out(done)
    assert "cannot reach" in done.stderr.decode()


# --- against a server -------------------------------------------------------------------------


async def test_admin_commands_with_the_data_dir_credentials(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = pushy_env(tmp_path / "home", PUSHY_DATA_DIR=str(data))
    keys = tmp_path / "out"
    keys.mkdir()  # --key-out never creates directories
    web1_key, alice_key = keys / "web1.pem", keys / "alice.pem"

    async with pushy_serve(tmp_path, data_dir=data) as server:
        web1, web2, acme = await run_all(
            env,
            tmp_path,
            ("client", "create", "web1", "--key-out", str(web1_key)),
            ("client", "create", "web2"),  # the key goes to stdout
            ("org", "create", "acme"),  # as the data dir's superuser
        )
        assert web1.returncode == 0, out(web1)
        assert "created client web1" in web1.stderr.decode()
        assert stat.S_IMODE(web1_key.stat().st_mode) == 0o600
        async with server.signed("web1", web1_key) as client:
            with trio.fail_after(10):
                r = await client.get(CLIENTS + "/web1")
            assert r.status_code == 200, r.text
        assert web2.returncode == 0, out(web2)
        chef_auth.load_private_key(web2.stdout)
        assert acme.returncode == 0, out(acme)
        assert "created organization acme" in acme.stdout.decode()

        again, delete, alice = await run_all(
            env,
            tmp_path,
            ("client", "create", "web1", "--key-out", str(keys / "x.pem")),
            ("client", "delete", "web2"),
            ("user", "create", "alice", "--org", "acme", "--admin", "--key-out", str(alice_key)),
        )
        # a second creation of the same name is refused by the server: exit 3
        assert again.returncode == 3, out(again)
        assert "client 'web1' already exists (HTTP 409)" in again.stderr.decode()
        assert not (keys / "x.pem").exists()
        assert delete.returncode == 0, out(delete)
        assert await clients_of(server, "default") == {"web1"}
        assert alice.returncode == 0, out(alice)
        assert stat.S_IMODE(alice_key.stat().st_mode) == 0o600
        async with server.signed("pivotal") as piv:
            with trio.fail_after(10):
                r = await piv.get("/organizations/acme/groups/admins")
        assert "alice" in r.json()["users"]

        gone, a1, w9, ops = await run_all(
            env,
            tmp_path,
            ("client", "delete", "web2"),
            # alice, an admin of acme, creates a client there (user and key from flags)
            ("client", "create", "a1", "--user", "alice", "--key", str(alice_key),
             "--org", "acme", "--key-out", str(keys / "a1.pem")),
            # a client that is no admin is refused: exit 3 with the server's reason
            ("client", "create", "w9", "--user", "web1", "--key", str(web1_key),
             "--key-out", str(keys / "w9.pem")),
            # group add creates the group
            ("group", "add", "ops", "--client", "web1", "--user", "alice"),
        )  # fmt: skip
        assert gone.returncode == 3, out(gone)
        assert "HTTP 404" in gone.stderr.decode()
        assert a1.returncode == 0, out(a1)
        assert await clients_of(server, "acme") == {"a1"}
        assert w9.returncode == 3, out(w9)
        assert "does not have access to that action" in w9.stderr.decode()
        assert "HTTP 403" in w9.stderr.decode()
        assert ops.returncode == 0, out(ops)

        # then merges members; group show prints the same document
        (merged,) = await run_all(
            env, tmp_path, ("group", "add", "ops", "--group", "admins", "--user", "admin")
        )
        assert merged.returncode == 0, out(merged)
        shown, ghost, nope = await run_all(
            env,
            tmp_path,
            ("group", "show", "ops"),
            ("group", "add", "ops", "--client", "ghost"),
            ("group", "show", "nope"),
        )
        assert shown.returncode == 0, out(shown)
        doc = json.loads(shown.stdout)
        assert doc == json.loads(merged.stdout)
        assert (doc["users"], doc["clients"], doc["groups"]) == (
            ["admin", "alice"],
            ["web1"],
            ["admins"],
        )
        assert ghost.returncode == 3, out(ghost)
        assert "client 'ghost' does not exist" in ghost.stderr.decode()
        assert nope.returncode == 3, out(nope)
        assert "group 'nope' not found (HTTP 404)" in nope.stderr.decode()
        assert await server.terminate() == 0, server.log()


async def test_credentials_from_flags_and_from_a_knife_profile(tmp_path: Path) -> None:
    data = tmp_path / "data"
    home = tmp_path / "home"
    env = pushy_env(home)  # no PUSHY_DATA_DIR: the data dir's credentials are not found

    async with pushy_serve(tmp_path, data_dir=data) as server:
        ca = str(data / "tls" / "ca.pem")
        admin_key = str(data / "keys" / "admin.pem")
        default_url = f"{server.url}/organizations/default"
        keys_out = tmp_path / "out"
        keys_out.mkdir()  # --key-out never creates directories
        flags = ("--server", default_url, "--user", "admin", "--key", admin_key)
        f1, untrusted, from_env = await run_all(
            env,
            tmp_path,
            # flags alone
            ("client", "create", "f1", *flags, "--ca-cert", ca, "--key-out", str(keys_out / "f1")),
            # the same without trusting the CA: refused by TLS, exit 3
            ("group", "show", "admins", *flags),
            # PUSHY_* variables (extra_env, below)
            ("group", "show", "admins"),
            extra_env={
                2: {
                    "PUSHY_SERVER": default_url,
                    "PUSHY_USER": "admin",
                    "PUSHY_KEY": admin_key,
                    "PUSHY_CA_CERT": ca,
                }
            },
        )
        assert f1.returncode == 0, out(f1)
        assert untrusted.returncode == 3, out(untrusted)
        assert server.url in untrusted.stderr.decode(), out(untrusted)
        assert from_env.returncode == 0, out(from_env)
        assert json.loads(from_env.stdout)["users"] == ["admin"]

        # a knife credentials file: profile names quoted or bare, key paths relative to
        # ~/.chef; plus a user of org acme as the default profile
        async with server.signed("pivotal") as piv:
            with trio.fail_after(10):
                assert (await piv.post("/organizations", {"name": "acme"})).status_code == 201
                r = await piv.post("/users", {"username": "barney", "create_key": True})
                assert r.status_code == 201, r.text
                barney_pem = r.json()["chef_key"]["private_key"]
                r = await piv.post("/organizations/acme/users", {"username": "barney"})
                assert r.status_code == 201, r.text
                r = await piv.put(
                    "/organizations/acme/groups/admins",
                    {"groupname": "admins", "actors": {"users": ["barney"]}},
                )
                assert r.status_code == 200, r.text
        chef = home / ".chef"
        chef.mkdir()
        (chef / "barney_rubble.pem").write_text(barney_pem)
        (chef / "credentials").write_text(
            "[default]\n"
            'client_name = "barney"\n'
            'client_key = "barney_rubble.pem"\n'
            f'chef_server_url = "{server.url}/organizations/acme"\n'
            f'ssl_ca_file = "{ca}"\n'
            "\n"
            "['ops.example.com']\n"
            'client_name = "admin"\n'
            f'client_key = "{admin_key}"\n'
            f'chef_server_url = "{default_url}"\n'
            f'ssl_ca_file = "{ca}"\n'
        )
        k1, k2, k3, k4, k5 = await run_all(
            env,
            tmp_path,
            ("client", "create", "k1", "--key-out", str(keys_out / "k1")),
            ("client", "create", "k2", "--profile", "ops.example.com",
             "--key-out", str(keys_out / "k2")),
            ("client", "create", "k3", "--key-out", str(keys_out / "k3")),
            # flags win over the profile
            ("client", "create", "k4", *flags, "--ca-cert", ca, "--key-out", str(keys_out / "k4")),
            ("client", "create", "k5", "--profile", "nope"),
            extra_env={2: {"PUSHY_PROFILE": "ops.example.com"}},
        )  # fmt: skip
        for done in (k1, k2, k3, k4):
            assert done.returncode == 0, out(done)
        assert k5.returncode == 2, out(k5)
        assert "no such profile" in k5.stderr.decode()
        assert await clients_of(server, "acme") == {"k1"}
        assert await clients_of(server, "default") == {"f1", "k2", "k3", "k4"}
        assert await server.terminate() == 0, server.log()


async def test_store_verify_and_compact(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = pushy_env(tmp_path / "home")
    key = chef_auth.public_key_pem(chef_auth.generate_private_key())

    async def pushy(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await run_pushy(*args, "--data-dir", str(data), env=env, cwd=tmp_path)

    async with pushy_serve(tmp_path, data_dir=data) as server:
        async with server.signed("pivotal") as piv:
            with trio.fail_after(10):
                for name in ("c1", "c2", "c3"):
                    r = await piv.post(CLIENTS, {"name": name, "public_key": key})
                    assert r.status_code == 201, r.text
                assert (await piv.post("/organizations", {"name": "acme"})).status_code == 201
        # verify reads next to a live server; compact needs it stopped
        done = await pushy("store", "verify")
        assert done.returncode == 0, out(done)
        done = await pushy("store", "compact")
        assert done.returncode == 1, out(done)
        assert "in use by another pushy process" in done.stderr.decode()
        assert await server.terminate() == 0, server.log()

    done = await pushy("store", "compact")
    assert done.returncode == 0, out(done)
    assert "snapshot at record" in done.stdout.decode()
    done = await pushy("store", "verify")
    assert done.returncode == 0, out(done)
    assert "1 snapshot(s)" in done.stdout.decode(), out(done)

    store = data / "store"

    def newest_segment() -> Path:
        return max(
            (p for p in store.iterdir() if parse_segment_name(p.name) is not None),
            key=lambda p: p.name,
        )

    async with pushy_serve(tmp_path, data_dir=data) as server:
        assert await clients_of(server, "default") == {"c1", "c2", "c3"}
        assert await clients_of(server, "acme") == set()
        async with server.signed() as admin:
            with trio.fail_after(10):
                r = await admin.post(CLIENTS, {"name": "before", "public_key": key})
                assert r.status_code == 201, r.text
                segment, start = newest_segment(), newest_segment().stat().st_size
                r = await admin.post(CLIENTS, {"name": "late", "public_key": key})
                assert r.status_code == 201, r.text
        assert await server.terminate() == 0, server.log()

    # flip a byte inside the first record of the newest commit: verify names the segment
    # and the offset, and exits 1
    assert segment == newest_segment() and segment.stat().st_size > start
    raw = bytearray(segment.read_bytes())
    raw[start + 12] ^= 0xFF
    segment.write_bytes(bytes(raw))
    done = await pushy("store", "verify")
    assert done.returncode == 1, out(done)
    report = done.stdout.decode()
    assert "DAMAGED" in report and f"problem: {segment} at byte {start}" in report, report

    # the next start cuts the damaged record off (into quarantine) and keeps the rest
    async with pushy_serve(tmp_path, data_dir=data) as server:
        assert await clients_of(server, "default") == {"c1", "c2", "c3", "before"}
        assert await server.terminate() == 0, server.log()
    cut = len(raw) - start
    assert f"damaged at byte {start}" in server.log() and f"cut {cut} byte(s)" in server.log()
    done = await pushy("store", "verify")
    assert done.returncode == 0, out(done)
    assert "quarantine" in done.stdout.decode()
