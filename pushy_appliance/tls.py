"""TLS material and contexts: the appliance's private CA, its server certificate, and trust.

On first start the server creates, under ``DATA/tls/``, a private CA and a server certificate
signed by it (both ECDSA P-256, valid ten years, never renewed silently):

* ``ca.pem`` / ``ca.key`` — the CA certificate and its key (0600);
* ``server.pem`` / ``server.key`` — the server certificate for the names the server answers to,
  and its key (0600).

Clients trust the server in one of two ways:

* **CA file** (``--ca-cert``): ordinary verification, host name included
  (:func:`client_ssl_context` with ``ca_file``).
* **Fingerprint pinning** (``--fingerprint SHA256:…``, like ``knife ssl fetch``): fetch the
  server's certificate without verification, compare its SHA-256 fingerprint with the pinned
  one, then connect with a context that trusts exactly that certificate and nothing else
  (:func:`pinned_client_context`). A later connection to a server presenting any other
  certificate fails the handshake.

Fingerprints are written ``SHA256:`` followed by 64 lower-case hex digits;
:func:`parse_fingerprint` also accepts colons, any case and no prefix (``openssl x509
-fingerprint`` output pastes as is).

File writing here is blocking (it runs once, at start-up; call it through
``trio.to_thread.run_sync`` from async code). :func:`fetch_server_certificate` and
:func:`pinned_client_context` are async and do network I/O.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import fsutil
from .errors import ConfigError, ServerUnreachableError, TLSUntrustedError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "client_ssl_context",
    "fetch_server_certificate",
    "fingerprint",
    "generate_ca",
    "issue_server_cert",
    "parse_fingerprint",
    "pinned_client_context",
    "server_ssl_context",
    "write_tls_material",
]

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

_VALIDITY = _dt.timedelta(days=3650)
# Certificates start an hour in the past so a client whose clock is a little behind accepts them.
_BACKDATE = _dt.timedelta(hours=1)
_FINGERPRINT_PREFIX = "SHA256:"
_KEY_MODE = 0o600
_CERT_MODE = 0o644

_StrPath = str | os.PathLike[str]


# --------------------------------------------------------------------------- certificates


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_ca(common_name: str = "Pushy Appliance CA") -> tuple[bytes, bytes]:
    """Create a private certificate authority.

    Args:
        common_name: the CA's subject common name.

    Returns:
        ``(cert_pem, key_pem)``: the self-signed CA certificate (ECDSA P-256, SHA-256, valid
        ten years, path length 0) and its unencrypted PKCS #8 key.
    """
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pushy Appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _dt.datetime.now(_dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _split_names(
    hostnames: Sequence[str], ips: Sequence[str]
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Deduplicated DNS names (IDNA-encoded) and IP addresses; IP-looking host names move over."""
    dns: list[str] = []
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in hostnames:
        name = raw.strip().rstrip(".").lower()
        if not name:
            continue
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            try:
                encoded = name.encode("idna").decode("ascii")
            except UnicodeError:
                raise ConfigError("tls", None, f"not a valid host name: {raw!r}") from None
            if encoded not in dns:
                dns.append(encoded)
            continue
        if address not in addresses:
            addresses.append(address)
    for raw in ips:
        try:
            address = ipaddress.ip_address(raw.strip())
        except ValueError:
            raise ConfigError("tls", None, f"not an IP address: {raw!r}") from None
        if address not in addresses:
            addresses.append(address)
    if not dns and not addresses:
        raise ConfigError("tls", None, "a server certificate needs a host name or an IP address")
    return dns, addresses


def issue_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hostnames: Sequence[str],
    ips: Sequence[str],
) -> tuple[bytes, bytes]:
    """Issue a TLS server certificate signed by the CA.

    Args:
        ca_cert_pem: the CA certificate (PEM).
        ca_key_pem: the CA's unencrypted private key (PEM).
        hostnames: DNS names for the subject alternative names; a value that is an IP
            address is treated as one.
        ips: IP addresses (v4 or v6) for the subject alternative names.

    Returns:
        ``(cert_pem, key_pem)``: the server certificate (ECDSA P-256, SHA-256, valid ten years,
        ``serverAuth``) and its unencrypted PKCS #8 key.

    Raises:
        ConfigError: the CA certificate or key cannot be read, or a name or address is
            invalid, or there is none at all.
    """
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as exc:
        raise ConfigError("tls", None, f"cannot read the CA certificate: {exc}") from None
    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("tls", None, f"cannot read the CA key: {exc}") from None
    if not isinstance(
        ca_key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ConfigError("tls", None, f"a {type(ca_key).__name__} cannot sign certificates")
    if ca_key.public_key() != ca_cert.public_key():
        raise ConfigError("tls", None, "the CA key does not belong to the CA certificate")
    dns, addresses = _split_names(hostnames, ips)
    key = _new_key()
    subject_cn = dns[0] if dns else str(addresses[0])
    now = _dt.datetime.now(_dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    sans += [x509.IPAddress(address) for address in addresses]
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    algorithm = (
        None
        if isinstance(ca_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


# --------------------------------------------------------------------------- fingerprints


def _cert_der(cert_pem_or_der: bytes) -> bytes:
    # Only PEM is text: DER is binary and may well end in a byte that ``strip()`` would cut
    # (0x20, 0x0a, ...), so DER bytes are taken exactly as given.
    data = cert_pem_or_der
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            pem = data.strip()
            return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError("certificate", None, f"not a PEM or DER certificate: {exc}") from None
    return data


def fingerprint(cert_pem_or_der: bytes) -> str:
    """The SHA-256 fingerprint of a certificate, as the CLI shows it and ``--fingerprint`` takes.

    Args:
        cert_pem_or_der: one certificate, PEM (first one if several) or DER.

    Returns:
        ``SHA256:`` followed by 64 lower-case hex digits (the digest of the DER encoding).

    Raises:
        ConfigError: the bytes are not a certificate.
    """
    return _FINGERPRINT_PREFIX + hashlib.sha256(_cert_der(cert_pem_or_der)).hexdigest()


def parse_fingerprint(text: str) -> bytes:
    """Read a SHA-256 certificate fingerprint as a user may paste it.

    Args:
        text: 64 hex digits, optionally with colons between bytes, in any case, optionally
            prefixed ``SHA256:`` (any case).

    Returns:
        The 32 bytes of the digest.

    Raises:
        ConfigError: (source ``fingerprint``) the text is not such a fingerprint.
    """
    value = text.strip()
    if value[: len(_FINGERPRINT_PREFIX)].upper() == _FINGERPRINT_PREFIX:
        value = value[len(_FINGERPRINT_PREFIX) :]
    digits = value.replace(":", "")
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ConfigError(
            "fingerprint",
            None,
            f"{text!r} is not a SHA-256 fingerprint (expected SHA256: and 64 hex digits)",
        )
    return bytes.fromhex(digits)


# --------------------------------------------------------------------------- contexts


def server_ssl_context(cert_file: _StrPath, key_file: _StrPath) -> ssl.SSLContext:
    """The server side TLS context for the API and node listeners.

    TLS 1.2 or later, ALPN ``http/1.1`` only (hypercorn then speaks HTTP/1.1, which the
    event feeds and the WebSocket upgrade need; trio-websocket uses the context as is).

    Args:
        cert_file: PEM certificate chain, leaf first.
        key_file: PEM private key of the leaf.

    Returns:
        A new server context.

    Raises:
        ConfigError: the files cannot be read or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            os.fspath(cert_file), None, f"cannot load certificate and key: {exc}"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_ssl_context(
    *, ca_file: _StrPath | None = None, pinned_cert_der: bytes | None = None
) -> ssl.SSLContext:
    """A client TLS context that trusts a CA file, one pinned certificate, or the system.

    Args:
        ca_file: PEM CA certificate(s): normal chain verification, host name included.
        pinned_cert_der: one certificate (DER) to trust exactly, whatever its issuer and
            names; host names are not checked, since the certificate itself is the identity.
            Use :func:`pinned_client_context` to get it safely.

    Returns:
        A new client context (TLS 1.2 or later); with neither argument, the system's trust
        store and host-name checking.

    Raises:
        ConfigError: both arguments given, the CA file cannot be read, or the pinned bytes
            are not a certificate.
    """
    if ca_file is not None and pinned_cert_der is not None:
        raise ConfigError("tls", None, "give a CA file or a pinned certificate, not both")
    if pinned_cert_der is not None:
        der = _cert_der(pinned_cert_der)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        # The pinned leaf is the trust anchor on its own: no chain up to a root is wanted.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_verify_locations(cadata=der)
    elif ca_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
        try:
            context.load_verify_locations(cafile=os.fspath(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                os.fspath(ca_file), None, f"cannot load CA certificates: {exc}"
            ) from None
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


# The deadline is a parameter (not left to the caller's fail_after) because expiring it is
# reported as ServerUnreachableError naming the server, like every other way of not getting in.
async def fetch_server_certificate(
    host: str,
    port: int,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> bytes:
    """Fetch the certificate a TLS server presents, without verifying it.

    Only for pinning: the result is trusted solely after its fingerprint is compared with
    one the user gave.

    Args:
        host: server host name or address.
        port: server port.
        timeout: seconds for connecting and the handshake together.

    Returns:
        The DER encoding of the server's leaf certificate.

    Raises:
        ServerUnreachableError: connection refused or failed, the handshake failed, or it
            took longer than ``timeout``.
        TLSUntrustedError: the server presented no certificate.

    Cancellation:
        Safe: the connection is closed.
    """
    url = _url(host, port)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=context, https_compatible=True
            )
            async with stream:
                await stream.do_handshake()
                der: bytes | None = stream.getpeercert(binary_form=True)
    except trio.TooSlowError:
        raise ServerUnreachableError(url, f"no TLS handshake within {timeout:g} s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        raise ServerUnreachableError(url, str(cause or exc) or type(exc).__name__) from exc
    if not der:
        raise TLSUntrustedError(url, None, "the server presented no certificate")
    return der


async def pinned_client_context(
    host: str,
    port: int,
    fingerprint_text: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 (handed to fetch_server_certificate)
) -> ssl.SSLContext:
    """A client context trusting exactly the server certificate with the pinned fingerprint.

    Fetches the server's certificate, compares its fingerprint with ``fingerprint_text``, and
    builds a context that trusts only that certificate; connections made with it fail if the
    server later presents any other one.

    Args:
        host: server host name or address.
        port: server port.
        fingerprint_text: the pinned fingerprint, in any form :func:`parse_fingerprint` reads.
        timeout: seconds for fetching the certificate.

    Returns:
        The client context.

    Raises:
        ConfigError: ``fingerprint_text`` is not a fingerprint (checked before connecting).
        ServerUnreachableError: the certificate could not be fetched.
        TLSUntrustedError: the server's certificate has another fingerprint; the error's
            ``fingerprint`` is the server's actual one.
    """
    expected = parse_fingerprint(fingerprint_text)
    der = await fetch_server_certificate(host, port, timeout=timeout)
    actual = hashlib.sha256(der).digest()
    if not hmac.compare_digest(actual, expected):
        raise TLSUntrustedError(_url(host, port), fingerprint(der), "fingerprint mismatch")
    return client_ssl_context(pinned_cert_der=der)


# --------------------------------------------------------------------------- files


def write_tls_material(tls_dir: Path, hostnames: Sequence[str], ips: Sequence[str]) -> None:
    """Create the CA and the server certificate in ``tls_dir`` where they are absent.

    Files: ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key`` (keys mode 0600). Each file
    is written durably (:func:`~pushy_appliance.fsutil.write_durably`), keys before
    certificates, so a crash half-way leaves a state the next call completes: a missing CA
    file makes a new CA (and a new server certificate, since the old one would not chain to
    it); a missing server file makes a new server certificate from the existing CA. Existing
    complete material is left untouched.

    Blocking (file I/O and key generation); from async code call it in a thread.

    Args:
        tls_dir: the directory (created 0700 if missing).
        hostnames: DNS names for the server certificate.
        ips: IP addresses for the server certificate.

    Raises:
        ConfigError: the directory or files cannot be written, the existing CA cannot be read,
            or the names are invalid.
    """
    ca_cert_path, ca_key_path = tls_dir / CA_CERT_FILE, tls_dir / CA_KEY_FILE
    server_cert_path, server_key_path = tls_dir / SERVER_CERT_FILE, tls_dir / SERVER_KEY_FILE
    try:
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        new_ca = not (ca_cert_path.is_file() and ca_key_path.is_file())
        if new_ca:
            ca_cert_pem, ca_key_pem = generate_ca()
            fsutil.write_durably(ca_key_path, ca_key_pem, mode=_KEY_MODE)
            fsutil.write_durably(ca_cert_path, ca_cert_pem, mode=_CERT_MODE)
            log.info(
                "created TLS certificate authority %s (%s)", ca_cert_path, fingerprint(ca_cert_pem)
            )
        else:
            ca_cert_pem, ca_key_pem = ca_cert_path.read_bytes(), ca_key_path.read_bytes()
        if new_ca or not (server_cert_path.is_file() and server_key_path.is_file()):
            cert_pem, key_pem = issue_server_cert(ca_cert_pem, ca_key_pem, hostnames, ips)
            fsutil.write_durably(server_key_path, key_pem, mode=_KEY_MODE)
            fsutil.write_durably(server_cert_path, cert_pem, mode=_CERT_MODE)
            log.info(
                "created TLS server certificate %s for %s (%s)",
                server_cert_path,
                ", ".join([*hostnames, *ips]),
                fingerprint(cert_pem),
            )
    except OSError as exc:
        raise ConfigError(
            str(exc.filename or tls_dir), None, f"cannot write TLS material: {exc.strerror or exc}"
        ) from None
