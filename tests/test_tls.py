"""TLS material, contexts and fingerprint pinning, against a real trio TLS server on port 0."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import ssl
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushy_appliance import tls
from pushy_appliance.errors import ConfigError, ServerUnreachableError, TLSUntrustedError

DEADLINE = 10.0


@dataclass(frozen=True)
class Material:
    dir: Path
    ca_file: Path
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    tls_dir = tmp_path_factory.mktemp("data") / "tls"
    tls.write_tls_material(tls_dir, ["localhost", "pushy.example.com"], ["127.0.0.1", "::1"])
    return Material(tls_dir, tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --------------------------------------------------------------------------- material


def test_material_files_and_modes(material: Material) -> None:
    names = sorted(p.name for p in material.dir.iterdir())
    assert names == ["ca.key", "ca.pem", "server.key", "server.pem"]
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((material.dir / key).stat().st_mode) == 0o600
    assert stat.S_IMODE(material.dir.stat().st_mode) == 0o700


def test_ca_certificate(material: Material) -> None:
    ca = load_cert(material.ca_file)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3652)
    assert ca.not_valid_before_utc < dt.datetime.now(dt.UTC)


def test_server_certificate_is_issued_by_the_ca_for_the_names(material: Material) -> None:
    ca = load_cert(material.ca_file)
    server = load_cert(material.server_cert)
    server.verify_directly_issued_by(ca)
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "pushy.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    public = server.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    key = serialization.load_pem_private_key(material.server_key.read_bytes(), password=None)
    assert key.public_key() == public


def test_write_tls_material_leaves_existing_material_alone(material: Material) -> None:
    before = {p.name: p.read_bytes() for p in material.dir.iterdir()}
    tls.write_tls_material(material.dir, ["other.example"], [])
    assert {p.name: p.read_bytes() for p in material.dir.iterdir()} == before


def test_missing_server_file_is_reissued_from_the_same_ca(tmp_path: Path) -> None:
    tls.write_tls_material(tmp_path, ["localhost"], ["127.0.0.1"])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    server_before = (tmp_path / "server.pem").read_bytes()
    (tmp_path / "server.pem").unlink()  # as if a crash came between the key and the cert
    tls.write_tls_material(tmp_path, ["localhost"], ["127.0.0.1"])
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    server = load_cert(tmp_path / "server.pem")
    assert server.public_bytes(serialization.Encoding.PEM) != server_before
    server.verify_directly_issued_by(load_cert(tmp_path / "ca.pem"))
    key = serialization.load_pem_private_key((tmp_path / "server.key").read_bytes(), None)
    assert key.public_key() == server.public_key()


def test_missing_ca_key_makes_a_new_ca_and_server(tmp_path: Path) -> None:
    tls.write_tls_material(tmp_path, ["localhost"], [])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    (tmp_path / "ca.key").unlink()
    tls.write_tls_material(tmp_path, ["localhost"], [])
    assert (tmp_path / "ca.pem").read_bytes() != ca_before
    load_cert(tmp_path / "server.pem").verify_directly_issued_by(load_cert(tmp_path / "ca.pem"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write TLS material"):
        tls.write_tls_material(blocker / "tls", ["localhost"], [])


def test_unreadable_existing_ca_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("garbage")
    (tmp_path / "ca.key").write_text("garbage")
    with pytest.raises(ConfigError, match="CA certificate"):
        tls.write_tls_material(tmp_path, ["localhost"], [])


def test_issue_server_cert_name_handling() -> None:
    ca_pem, ca_key = tls.generate_ca("Test CA")
    cert_pem, _ = tls.issue_server_cert(
        ca_pem,
        ca_key,
        ["Host.Example.", "10.0.0.5", "host.example", "bücher.example"],
        ["10.0.0.5"],
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["host.example", "xn--bcher-kva.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku


@pytest.mark.parametrize(
    ("hostnames", "ips", "match"),
    [
        ([], [], "needs a host name"),
        ([" "], [], "needs a host name"),
        ([], ["10.0.0.256"], "not an IP"),
    ],
)
def test_issue_server_cert_bad_names(hostnames: list[str], ips: list[str], match: str) -> None:
    ca_pem, ca_key = tls.generate_ca()
    with pytest.raises(ConfigError, match=match):
        tls.issue_server_cert(ca_pem, ca_key, hostnames, ips)


def test_issue_server_cert_with_a_key_of_another_ca() -> None:
    ca_pem, _ = tls.generate_ca()
    _, other_key = tls.generate_ca()
    with pytest.raises(ConfigError, match="does not belong"):
        tls.issue_server_cert(ca_pem, other_key, ["localhost"], [])


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_of_pem_and_der(material: Material) -> None:
    pem = material.server_cert.read_bytes()
    der = load_cert(material.server_cert).public_bytes(serialization.Encoding.DER)
    expected = "SHA256:" + hashlib.sha256(der).hexdigest()
    assert tls.fingerprint(pem) == expected
    assert tls.fingerprint(der) == expected
    assert re.fullmatch(r"SHA256:[0-9a-f]{64}", expected)


def test_der_ending_in_a_whitespace_byte_is_taken_whole(material: Material) -> None:
    # A DER certificate is binary: about one in forty ends in a byte such as 0x20 or 0x0a.
    # Such a certificate once failed pinning ("not a PEM or DER certificate") because its
    # last byte was stripped as if it were text.
    ca_pem = material.ca_file.read_bytes()
    ca_key = (material.dir / tls.CA_KEY_FILE).read_bytes()
    for _ in range(5000):
        pem, _key = tls.issue_server_cert(ca_pem, ca_key, ["localhost"], [])
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        if der[-1:].isspace():
            break
    else:
        pytest.fail("no certificate ending in a whitespace byte in 5000 tries")
    assert tls.fingerprint(der) == "SHA256:" + hashlib.sha256(der).hexdigest()
    assert tls.fingerprint(pem) == tls.fingerprint(der)
    context = tls.client_ssl_context(pinned_cert_der=der)
    assert context.cert_store_stats()["x509"] == 1


def test_fingerprint_of_garbage() -> None:
    with pytest.raises(ConfigError):
        tls.fingerprint(b"not a certificate")


def test_parse_fingerprint_forms() -> None:
    raw = bytes(range(32))
    hex_lower = raw.hex()
    colons = ":".join(f"{b:02X}" for b in raw)
    for text in (
        "SHA256:" + hex_lower,
        hex_lower,
        hex_lower.upper(),
        colons,
        "sha256:" + colons,
        "  Sha256:" + hex_lower + "\n",
    ):
        assert tls.parse_fingerprint(text) == raw, text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SHA256:",
        "SHA256:" + "ab" * 31,
        "ab" * 33,
        "SHA1:" + "ab" * 32,
        "zz" * 32,
        "SHA256:" + "g" * 64,
    ],
)
def test_parse_fingerprint_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        tls.parse_fingerprint(text)
    assert excinfo.value.source == "fingerprint"


# --------------------------------------------------------------------------- live TLS


async def echo_handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        async with stream:
            data = await stream.receive_some(1024)
            if data:
                await stream.send_all(b"echo:" + data)
    except trio.BrokenResourceError:
        pass  # the client refused our certificate: that is what several tests want


async def start_server(nursery: trio.Nursery, cert: Path, key: Path) -> int:
    context = tls.server_ssl_context(cert, key)
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, echo_handler, 0, context, host="127.0.0.1")
    )
    port: int = listeners[0].transport_listener.socket.getsockname()[1]
    return port


async def exchange(port: int, context: ssl.SSLContext) -> tuple[bytes, str | None]:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    async with stream:
        await stream.send_all(b"ping")
        reply = bytes(await stream.receive_some(1024))
        alpn: str | None = stream.selected_alpn_protocol()
    return reply, alpn


async def test_client_trusting_the_ca_connects(material: Material, nursery: trio.Nursery) -> None:
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, material.server_cert, material.server_key)
        context = tls.client_ssl_context(ca_file=material.ca_file)
        assert context.check_hostname is True
        context.set_alpn_protocols(["h2", "http/1.1"])
        assert await exchange(port, context) == (b"echo:ping", "http/1.1")


async def test_client_trusting_another_ca_fails(
    material: Material, nursery: trio.Nursery, tmp_path: Path
) -> None:
    other_ca, _ = tls.generate_ca("Someone else")
    (tmp_path / "other.pem").write_bytes(other_ca)
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, material.server_cert, material.server_key)
        context = tls.client_ssl_context(ca_file=tmp_path / "other.pem")
        with pytest.raises(trio.BrokenResourceError) as excinfo:
            await exchange(port, context)
    assert isinstance(excinfo.value.__cause__, ssl.SSLCertVerificationError)


async def test_host_name_is_verified_with_a_ca_file(
    material: Material, nursery: trio.Nursery, tmp_path: Path
) -> None:
    cert_pem, key_pem = tls.issue_server_cert(
        material.ca_file.read_bytes(), (material.dir / "ca.key").read_bytes(), ["elsewhere"], []
    )
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "c.key").write_bytes(key_pem)
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, tmp_path / "c.pem", tmp_path / "c.key")
        with pytest.raises(trio.BrokenResourceError) as excinfo:
            await exchange(port, tls.client_ssl_context(ca_file=material.ca_file))
    cause = excinfo.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "127.0.0.1" in str(cause)


async def test_fetch_server_certificate(material: Material, nursery: trio.Nursery) -> None:
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, material.server_cert, material.server_key)
        der = await tls.fetch_server_certificate("127.0.0.1", port)
    assert der == load_cert(material.server_cert).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("form", ["canonical", "colons"])
async def test_pinning_with_the_right_fingerprint(
    material: Material, nursery: trio.Nursery, form: str
) -> None:
    pin = tls.fingerprint(material.server_cert.read_bytes())
    if form == "colons":
        digits = pin.removeprefix("SHA256:").upper()
        pin = ":".join(digits[i : i + 2] for i in range(0, 64, 2))
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, material.server_cert, material.server_key)
        context = await tls.pinned_client_context("127.0.0.1", port, pin)
        assert context.check_hostname is False
        assert await exchange(port, context) == (b"echo:ping", None)


async def test_pinning_with_a_wrong_fingerprint(material: Material, nursery: trio.Nursery) -> None:
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, material.server_cert, material.server_key)
        with pytest.raises(TLSUntrustedError) as excinfo:
            await tls.pinned_client_context("127.0.0.1", port, "SHA256:" + "00" * 32)
    assert excinfo.value.fingerprint == tls.fingerprint(material.server_cert.read_bytes())
    assert excinfo.value.reason == "fingerprint mismatch"
    assert excinfo.value.url == f"https://127.0.0.1:{port}"
    assert excinfo.value.fingerprint in str(excinfo.value)


async def test_bad_fingerprint_text_fails_before_connecting() -> None:
    with pytest.raises(ConfigError):
        # Port 1 on loopback is never served here; the error must come from parsing first.
        await tls.pinned_client_context("127.0.0.1", 1, "SHA256:nope")


async def test_pinned_context_trusts_only_that_certificate(
    material: Material, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Same CA, same names, different certificate: a CA-trusting client would accept it.
    cert_pem, key_pem = tls.issue_server_cert(
        material.ca_file.read_bytes(),
        (material.dir / "ca.key").read_bytes(),
        ["localhost"],
        ["127.0.0.1"],
    )
    (tmp_path / "twin.pem").write_bytes(cert_pem)
    (tmp_path / "twin.key").write_bytes(key_pem)
    with trio.fail_after(DEADLINE):
        port = await start_server(nursery, material.server_cert, material.server_key)
        twin_port = await start_server(nursery, tmp_path / "twin.pem", tmp_path / "twin.key")
        pinned = await tls.pinned_client_context(
            "127.0.0.1", port, tls.fingerprint(material.server_cert.read_bytes())
        )
        with pytest.raises(trio.BrokenResourceError) as excinfo:
            await exchange(twin_port, pinned)
        assert isinstance(excinfo.value.__cause__, ssl.SSLCertVerificationError)
        ca_context = tls.client_ssl_context(ca_file=material.ca_file)
        assert (await exchange(twin_port, ca_context))[0] == b"echo:ping"


async def test_fetch_from_a_closed_port(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with trio.fail_after(DEADLINE), pytest.raises(ServerUnreachableError) as excinfo:
        await tls.fetch_server_certificate("127.0.0.1", port)
    assert excinfo.value.url == f"https://127.0.0.1:{port}"


async def test_fetch_from_a_server_that_never_answers_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    start = trio.current_time()
    with pytest.raises(ServerUnreachableError) as excinfo:
        await tls.fetch_server_certificate("127.0.0.1", port, timeout=5.0)
    assert "within 5 s" in excinfo.value.reason
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_fetch_from_a_plain_http_server_fails(nursery: trio.Nursery) -> None:
    async def plain(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(1024)
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    listeners = await nursery.start(partial(trio.serve_tcp, plain, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(DEADLINE), pytest.raises(ServerUnreachableError):
        await tls.fetch_server_certificate("127.0.0.1", port)


# --------------------------------------------------------------------------- context errors


def test_client_context_takes_one_source(material: Material) -> None:
    der = load_cert(material.server_cert).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ConfigError, match="not both"):
        tls.client_ssl_context(ca_file=material.ca_file, pinned_cert_der=der)


def test_client_context_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        tls.client_ssl_context(ca_file=tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError):
        tls.client_ssl_context(ca_file=tmp_path / "junk.pem")
    with pytest.raises(ConfigError):
        tls.client_ssl_context(pinned_cert_der=b"junk")


def test_default_client_context_uses_system_trust() -> None:
    context = tls.client_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_server_context(material: Material, tmp_path: Path) -> None:
    context = tls.server_ssl_context(material.server_cert, str(material.server_key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    other_key = tmp_path / "other.key"
    other_key.write_bytes(tls.generate_ca()[1])
    os.chmod(other_key, 0o600)
    with pytest.raises(ConfigError, match="cannot load certificate and key"):
        tls.server_ssl_context(material.server_cert, other_key)
    with pytest.raises(ConfigError):
        tls.server_ssl_context(tmp_path / "missing.pem", material.server_key)
