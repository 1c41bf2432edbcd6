"""Which credentials the CLI uses, and saying so (issue 12 §1 and §4).

TLS trust is resolved on its own, whichever source gave the server, user and key: every
credential source × every trust source goes through the real ``pushy`` (a subprocess) against
a real appliance (in-process, real TLS on 127.0.0.1), and ``pushy whoami`` shows what was
taken from where. Errors that the credentials may explain name each part's source.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance import chef_auth, tls
from pushy_appliance.client import load_credentials
from pushy_appliance.errors import ConfigError

from helpers import running_server, test_config

PUSHY = (sys.executable, "-m", "pushy_appliance.cli")
LIMIT = 30.0
ORG_PATH = "/organizations/default"


def base_env(home: Path, data_dir: Path | None) -> dict[str, str]:
    """Our environment without ``PUSHY_*``; ``HOME`` in the test's directory; the data
    directory ``data_dir``, or one that does not exist."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHY_")}
    env.pop("XDG_DATA_HOME", None)
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PUSHY_DATA_DIR"] = str(data_dir or home / "no-data-dir")
    return env


def write_profile(home: Path, **keys: str) -> Path:
    chef = home / ".chef"
    chef.mkdir(parents=True, exist_ok=True)
    path = chef / "credentials"
    path.write_text("[default]\n" + "".join(f"{k} = '{v}'\n" for k, v in keys.items()))
    return path


async def run(
    args: tuple[str, ...], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(LIMIT):
        return await trio.run_process(
            [*PUSHY, *args],
            env=env,
            cwd=str(cwd),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def show(done: subprocess.CompletedProcess[bytes]) -> str:
    return (
        f"exit {done.returncode}\nstdout:\n{done.stdout.decode()}\nstderr:\n{done.stderr.decode()}"
    )


def whoami(done: subprocess.CompletedProcess[bytes]) -> dict[str, str]:
    """``pushy whoami``'s lines as part → ``VALUE (from SOURCE)``."""
    parts: dict[str, str] = {}
    for line in done.stdout.decode().splitlines():
        name, _, rest = line.partition(" ")
        parts[name] = rest.strip()
    return parts


# --- the matrix: each credential source × each trust source, through the real CLI ------------

CREDENTIAL_SOURCES = ("flags", "environment", "profile", "data directory")
TRUST_SOURCES = ("--ca-cert", "PUSHY_CA_CERT", "profile ssl_ca_file", "--fingerprint", "data dir")


async def test_every_credential_source_with_every_trust_source(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(test_config(data)) as info:
        url = f"{info.url}{ORG_PATH}"
        ca = str(data / "tls" / "ca.pem")
        key = str(data / "keys" / "admin.pem")
        fingerprint = tls.fingerprint((data / "tls" / "server.pem").read_bytes())
        cases = []
        for i, creds in enumerate(CREDENTIAL_SOURCES):
            for j, trust in enumerate(TRUST_SOURCES):
                home = tmp_path / f"home-{i}-{j}"
                uses_data_dir = creds == "data directory" or trust == "data dir"
                env = base_env(home, data if uses_data_dir else None)
                args: list[str] = []
                profile: dict[str, str] = {}
                if creds == "flags":
                    args += ["--server", url, "--user", "admin", "--key", key]
                elif creds == "environment":
                    env |= {"PUSHY_SERVER": url, "PUSHY_USER": "admin", "PUSHY_KEY": key}
                elif creds == "profile":
                    profile |= {"client_name": "admin", "client_key": key, "chef_server_url": url}
                if trust == "--ca-cert":
                    args += ["--ca-cert", ca]
                elif trust == "PUSHY_CA_CERT":
                    env["PUSHY_CA_CERT"] = ca
                elif trust == "profile ssl_ca_file":
                    # the profile's trust counts for the server it names
                    profile |= {"chef_server_url": url, "ssl_ca_file": ca}
                elif trust == "--fingerprint":
                    args += ["--fingerprint", fingerprint]
                profile_file = write_profile(home, **profile) if profile else None
                cases.append((creds, trust, env, home, tuple(args), profile_file))

        results: dict[tuple[str, str], tuple[object, object]] = {}
        limiter = trio.CapacityLimiter(4)

        async def one(case: tuple[Any, ...]) -> None:
            creds, trust, env, home, args, _ = case
            async with limiter:
                listed = await run(("job", "list", "--json", *args), env, home)
                shown = await run(("whoami", *args), env, home)
            results[(creds, trust)] = (listed, shown)

        async with trio.open_nursery() as nursery:
            for case in cases:
                nursery.start_soon(one, case)

    data_source = f"data directory {data}, named by PUSHY_DATA_DIR"
    for creds, trust, _env, _home, _args, profile_file in cases:
        listed, shown = results[(creds, trust)]
        assert isinstance(listed, subprocess.CompletedProcess)
        assert isinstance(shown, subprocess.CompletedProcess)
        where = f"credentials from {creds}, trust from {trust}"
        assert listed.returncode == 0, f"{where}\n{show(listed)}"
        assert listed.stdout.strip() == b"[]", f"{where}\n{show(listed)}"
        assert shown.returncode == 0, f"{where}\n{show(shown)}"
        parts = whoami(shown)
        profile_source = f"profile default of {profile_file}"
        expected_creds = {
            "flags": ("flag --server", "flag --user", "flag --key"),
            "environment": (
                "environment PUSHY_SERVER",
                "environment PUSHY_USER",
                "environment PUSHY_KEY",
            ),
            "profile": (profile_source,) * 3,
            "data directory": (data_source,) * 3,
        }[creds]
        if creds == "data directory" and trust == "profile ssl_ca_file":
            # the profile comes before the data directory: it names the server too
            expected_creds = (profile_source, data_source, data_source)
        expected_trust = {
            "--ca-cert": (f"CA {ca}", "flag --ca-cert"),
            "PUSHY_CA_CERT": (f"CA {ca}", "environment PUSHY_CA_CERT"),
            "profile ssl_ca_file": (f"CA {ca}", profile_source),
            "--fingerprint": (f"fingerprint {fingerprint}", "flag --fingerprint"),
            "data dir": (f"CA {ca}", data_source),
        }[trust]
        assert parts["server"] == f"{url} (from {expected_creds[0]})", where
        assert parts["user"] == f"admin (from {expected_creds[1]})", where
        assert parts["key"] == f"{key} (from {expected_creds[2]})", where
        assert parts["trust"] == f"{expected_trust[0]} (from {expected_trust[1]})", where
        assert b"BEGIN" not in shown.stdout  # never the key itself


# --- errors name the sources ------------------------------------------------------------------


async def test_auth_and_trust_errors_name_the_source_of_each_part(tmp_path: Path) -> None:
    data = tmp_path / "data"
    other = tmp_path / "other.pem"
    other.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    async with running_server(test_config(data)) as info:
        url = f"{info.url}{ORG_PATH}"
        home = tmp_path / "home"
        # 401: user from the environment, a key from a flag that is not the user's
        env = base_env(home, data) | {"PUSHY_USER": "admin"}
        refused = await run(("job", "list", "--key", str(other)), env, home)
        # TLS: credentials from a knife profile without ssl_ca_file, no data directory
        untrusting = tmp_path / "home2"
        profile = write_profile(
            untrusting,
            client_name="admin",
            client_key=str(data / "keys" / "admin.pem"),
            chef_server_url=url,
        )
        untrusted = await run(("job", "list"), base_env(untrusting, None), untrusting)
        # an unreadable key named by PUSHY_KEY
        missing = await run(
            ("job", "list"), base_env(home, data) | {"PUSHY_KEY": str(tmp_path / "nope.pem")}, home
        )
    data_source = f"data directory {data}, named by PUSHY_DATA_DIR"
    assert refused.returncode == 3, show(refused)
    err = refused.stderr.decode()
    assert err.startswith("pushy: ") and "(HTTP 401)" in err.splitlines()[0], err
    assert f"  server {url} (from {data_source})" in err, err
    assert "  user   admin (from environment PUSHY_USER)" in err, err
    assert f"  key    {other} (from flag --key)" in err, err
    assert f"  trust  CA {data / 'tls' / 'ca.pem'} (from {data_source})" in err, err

    assert untrusted.returncode == 3, show(untrusted)
    err = untrusted.stderr.decode()
    assert "is not trusted" in err.splitlines()[0], err
    assert f"  server {url} (from profile default of {profile})" in err, err
    assert "  trust  the system's CAs (from the default: no --ca-cert" in err, err

    assert missing.returncode == 2, show(missing)
    err = missing.stderr.decode()
    assert "cannot read key" in err.splitlines()[0], err
    assert f"  key    {tmp_path / 'nope.pem'} (from environment PUSHY_KEY)" in err, err
    for done in (refused, untrusted, missing):
        assert b"Traceback" not in done.stderr


async def test_whoami_without_any_credentials_is_a_usage_error(tmp_path: Path) -> None:
    done = await run(("whoami",), base_env(tmp_path / "home", None), tmp_path)
    assert done.returncode == 2, show(done)
    assert done.stderr.decode().startswith("pushy: credentials: no server URL, user, key found")


# --- load_credentials in-process: the rules behind the matrix -----------------------------------


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As a user who is not root, the default data directory is ``$XDG_DATA_HOME/pushy``."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    yield


def test_the_default_data_directory_is_named_as_the_default(tmp_path: Path, not_root: None) -> None:
    data = tmp_path / "xdg" / "pushy"
    (data / "tls").mkdir(parents=True)
    (data / "tls" / "ca.pem").write_text("a CA")
    (data / "credentials").write_text(
        "[default]\nclient_name = 'admin'\nclient_key = 'keys/admin.pem'\n"
        "chef_server_url = 'https://h:1/organizations/o'\n"
    )
    creds = load_credentials(environ={"XDG_DATA_HOME": str(tmp_path / "xdg")}, home=tmp_path)
    source = f"data directory {data}, the default, as neither --data-dir nor PUSHY_DATA_DIR is set"
    assert (creds.sources.server, creds.sources.user, creds.sources.key) == (source,) * 3
    assert creds.key_file == str(data / "keys" / "admin.pem")
    assert (creds.ca_file, creds.sources.trust) == (str(data / "tls" / "ca.pem"), source)


def test_a_profiles_trust_counts_only_for_the_server_it_names(tmp_path: Path) -> None:
    write_profile(
        tmp_path,
        client_name="knife",
        client_key="knife.pem",
        chef_server_url="https://chef.example.com/organizations/o",
        ssl_ca_file="chef-ca.pem",
    )
    environ = {"PUSHY_DATA_DIR": str(tmp_path / "none")}
    # another server from the flags: the profile's CA is not for it
    creds = load_credentials(
        server="https://pushy.example.com:10003/organizations/o",
        user="u",
        key="k.pem",
        environ=environ,
        home=tmp_path,
    )
    assert (creds.ca_file, creds.fingerprint) == (None, None)
    assert creds.trust == "the system's CAs"
    # the same server (host and port; case does not matter): its CA is taken
    creds = load_credentials(
        server="https://CHEF.example.com/organizations/other",
        user="u",
        key="k.pem",
        environ=environ,
        home=tmp_path,
    )
    assert creds.ca_file == str(tmp_path / ".chef" / "chef-ca.pem")
    assert creds.sources.trust == f"profile default of {tmp_path / '.chef' / 'credentials'}"


def test_trust_settings_of_two_sources_are_never_mixed(tmp_path: Path) -> None:
    fp = "SHA256:" + "ab" * 32
    creds = load_credentials(
        server="https://h:1/organizations/o",
        user="u",
        key="k.pem",
        ca_file="flag-ca.pem",
        environ={"PUSHY_FINGERPRINT": fp, "PUSHY_DATA_DIR": str(tmp_path)},
        home=tmp_path,
    )
    assert (creds.ca_file, creds.fingerprint) == ("flag-ca.pem", None)
    assert creds.sources.trust == "flag --ca-cert"
    creds = load_credentials(
        server="https://h:1/organizations/o",
        user="u",
        key="k.pem",
        environ={"PUSHY_FINGERPRINT": fp, "PUSHY_DATA_DIR": str(tmp_path)},
        home=tmp_path,
    )
    assert (creds.ca_file, creds.fingerprint) == (None, fp)
    assert creds.trust == f"fingerprint {fp}"
    assert creds.sources.trust == "environment PUSHY_FINGERPRINT"


def test_a_named_profile_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such profile"):
        load_credentials(profile="ops", environ={"PUSHY_DATA_DIR": str(tmp_path)}, home=tmp_path)
    write_profile(tmp_path, client_name="u")
    with pytest.raises(ConfigError, match="no such profile"):
        load_credentials(profile="ops", environ={"PUSHY_DATA_DIR": str(tmp_path)}, home=tmp_path)


def test_a_bad_server_url_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server URL \(from environment PUSHY_SERVER\)"):
        load_credentials(
            user="u",
            key="k",
            environ={"PUSHY_SERVER": "https://h:1/", "PUSHY_DATA_DIR": str(tmp_path)},
            home=tmp_path,
        )
