"""Sharing a cluster's keys and CA: ``cluster_secrets`` (pure) and ``pushy cluster export`` /
``pushy cluster join`` on real data directories made by a real first start."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import httpx
import pytest

from pushy_appliance import tls
from pushy_appliance.cli import main
from pushy_appliance.cluster_secrets import (
    SECRET_FILES,
    check_secrets,
    conflicts,
    decode_bundle,
    encode_bundle,
    issued_by,
)
from pushy_appliance.errors import ConfigError

from helpers import Signed, running_server, test_config

ORG = "/organizations/default"


async def started_data_dir(path: Path) -> Path:
    """A data directory after a real first start of the appliance (then stopped)."""
    async with running_server(test_config(path)):
        pass
    assert (path / "bootstrap.done").exists()
    return path


def secrets_of(data_dir: Path) -> dict[str, bytes]:
    return {name: (data_dir / name).read_bytes() for name in SECRET_FILES}


def pushy(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the pure checks -------------------------------------------------------------------------


async def test_check_secrets_names_every_missing_file_and_each_bad_one(tmp_path: Path) -> None:
    good = secrets_of(await started_data_dir(tmp_path / "a"))
    check_secrets(good, "a")
    partial = {n: v for n, v in good.items() if n not in ("keys/admin.pem", "tls/ca.key")}
    with pytest.raises(ConfigError) as refused:
        check_secrets(partial, "a")
    assert "missing keys/admin.pem, tls/ca.key" in str(refused.value)
    rows = [
        ("keys/pivotal.pem", b"not a key", "not a usable private key"),
        ("tls/ca.pem", b"-----BEGIN CERTIFICATE-----\nxx\n", "not a PEM certificate"),
        ("tls/ca.key", good["keys/admin.pem"], "is not the key of tls/ca.pem"),
    ]
    for name, content, text in rows:
        with pytest.raises(ConfigError) as refused:
            check_secrets({**good, name: content}, "a")
        assert (refused.value.key, text in refused.value.reason) == (name, True)
    with pytest.raises(ConfigError, match=r"not a shared secret: tls/server\.key"):
        check_secrets({**good, "tls/server.key": b""}, "a")


async def test_bundle_round_trip_and_refusals(tmp_path: Path) -> None:
    data = await started_data_dir(tmp_path / "a")
    good = secrets_of(data)
    bundle = encode_bundle(good)
    assert decode_bundle(bundle, "b.json") == good
    doc = json.loads(bundle)
    for broken, text in [
        (b"{not json", "neither a data directory nor a bundle"),
        (json.dumps({**doc, "format": "x"}).encode(), "neither a data directory nor a bundle"),
        (json.dumps({**doc, "version": 2}).encode(), "bundle version 2 is not 1"),
        (json.dumps({**doc, "files": [1]}).encode(), "expected a table"),
        (
            json.dumps({**doc, "files": {"tls/ca.pem": doc["files"]["tls/ca.pem"]}}).encode(),
            "missing keys/pivotal.pem, keys/admin.pem, tls/ca.key",
        ),
    ]:
        with pytest.raises(ConfigError) as refused:
            decode_bundle(broken, "b.json")
        assert refused.value.source == "b.json"
        assert text in str(refused.value)
    server_pem = (data / "tls" / "server.pem").read_bytes()
    assert issued_by(server_pem, good["tls/ca.pem"])
    other_ca, _ = tls.generate_ca()
    assert not issued_by(server_pem, other_ca)
    assert not issued_by(b"garbage", good["tls/ca.pem"])
    assert conflicts(good, {"tls/ca.pem": other_ca, "keys/admin.pem": good["keys/admin.pem"]}) == [
        "tls/ca.pem"
    ]


# --- the commands ----------------------------------------------------------------------------


async def test_join_from_a_data_directory_then_serve_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await started_data_dir(tmp_path / "a")
    joined = tmp_path / "new" / "b"
    code, out, err = pushy(capsys, "cluster", "join", str(first), "--data-dir", str(joined))
    assert (code, err) == (0, "")
    assert "wrote keys/pivotal.pem, keys/admin.pem, tls/ca.pem, tls/ca.key" in out
    assert secrets_of(joined) == secrets_of(first)
    modes = {n: stat.S_IMODE((joined / n).stat().st_mode) for n in SECRET_FILES}
    assert modes == {
        "keys/pivotal.pem": 0o600,
        "keys/admin.pem": 0o600,
        "tls/ca.pem": 0o644,
        "tls/ca.key": 0o600,
    }
    assert stat.S_IMODE(joined.stat().st_mode) == 0o700
    # again: nothing to do
    code, out, _ = pushy(capsys, "cluster", "join", str(first), "--data-dir", str(joined))
    assert code == 0 and "already shares" in out

    # its first start issues its own server certificate from the shared CA, and the shared
    # admin key signs for it
    async with running_server(test_config(joined)) as info:
        server_pem = (joined / "tls" / "server.pem").read_bytes()
        assert server_pem != (first / "tls" / "server.pem").read_bytes()
        assert issued_by(server_pem, (first / "tls" / "ca.pem").read_bytes())
        ca = tls.client_ssl_context(ca_file=first / "tls" / "ca.pem")
        async with httpx.AsyncClient(verify=ca, timeout=10) as http:
            admin = Signed.from_file(http, info.url, "admin", first / "keys" / "admin.pem")
            r = await admin.get(f"{ORG}/pushy/node_states")
            assert r.status_code == 200, r.text
    # started with the shared secrets: joining again is still harmless
    code, out, _ = pushy(capsys, "cluster", "join", str(first), "--data-dir", str(joined))
    assert code == 0 and "already shares" in out


async def test_export_then_join_from_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await started_data_dir(tmp_path / "a")
    bundle = tmp_path / "cluster.json"
    code, out, err = pushy(
        capsys, "cluster", "export", "--data-dir", str(first), "--out", str(bundle)
    )
    assert (code, err) == (0, "")
    assert str(bundle) in out
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    code, _, _ = pushy(capsys, "cluster", "join", str(bundle), "--data-dir", str(tmp_path / "b"))
    assert code == 0
    assert secrets_of(tmp_path / "b") == secrets_of(first)
    # never over an existing file
    code, _, err = pushy(
        capsys, "cluster", "export", "--data-dir", str(first), "--out", str(bundle)
    )
    assert code == 2 and "already exists" in err


async def test_join_refusals_name_what_is_wrong_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await started_data_dir(tmp_path / "a")
    other = await started_data_dir(tmp_path / "other")

    # a source without the CA's key and the admin's key: both named
    partial = tmp_path / "partial"
    shutil.copytree(first, partial)
    (partial / "tls" / "ca.key").unlink()
    (partial / "keys" / "admin.pem").unlink()
    target = tmp_path / "t1"
    code, _, err = pushy(capsys, "cluster", "join", str(partial), "--data-dir", str(target))
    assert code == 2
    assert f"pushy: {partial}: missing keys/admin.pem, tls/ca.key" in err
    assert not target.exists()

    # a data directory started on its own
    before = secrets_of(other)
    code, _, err = pushy(capsys, "cluster", "join", str(first), "--data-dir", str(other))
    assert code == 2
    assert "already has its own keys/pivotal.pem, keys/admin.pem, tls/ca.pem, tls/ca.key" in err
    assert secrets_of(other) == before

    # a server certificate from another CA (and nothing else yet)
    target = tmp_path / "t2"
    (target / "tls").mkdir(parents=True)
    shutil.copy(other / "tls" / "server.pem", target / "tls" / "server.pem")
    code, _, err = pushy(capsys, "cluster", "join", str(first), "--data-dir", str(target))
    assert code == 2
    assert "tls/server.pem: was not issued by the cluster's CA" in err
    assert sorted(p.name for p in target.rglob("*")) == ["server.pem", "tls"]

    # neither a directory nor a bundle; a file that is no bundle; the target itself
    for source, text in [
        (tmp_path / "nowhere", "no such data directory or bundle file"),
        (first / "credentials", "neither a data directory nor a bundle"),
        (first, "is SOURCE itself"),
    ]:
        target = first if source == first else tmp_path / "t3"
        code, _, err = pushy(capsys, "cluster", "join", str(source), "--data-dir", str(target))
        assert code == 2 and text in err, err
    assert not (tmp_path / "t3").exists()
