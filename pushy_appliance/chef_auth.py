"""Chef's signed-header request authentication, both the signing and the verifying side.

This is the scheme of Chef's Ruby library ``mixlib-authentication`` and of the Chef Server's
``chef_authn``; existing Chef tools must interoperate with it byte for byte. Pure: no I/O.

The protocol, as implemented here:

* Headers: ``X-Ops-Sign`` (``algorithm=sha1;version=1.0;`` as Ruby writes it, or
  ``version=1.0`` / ``algorithm=sha256;version=1.3`` as the Chef Server writes it),
  ``X-Ops-UserId``, ``X-Ops-Timestamp`` (``YYYY-MM-DDTHH:MM:SSZ``, UTC),
  ``X-Ops-Content-Hash`` (base64 digest of the raw body: SHA-1 for versions up to 1.2, SHA-256
  for 1.3) and ``X-Ops-Authorization-1..N`` (the base64 signature in 60-character lines).
* Canonical path: the request path without its query string, runs of ``/`` collapsed to one and
  a trailing ``/`` removed (``/`` itself stays).
* Versions 1.0, 1.1 and 1.2 sign the string (lines joined by ``\\n``)::

      Method:POST
      Hashed Path:<base64 SHA-1 of the canonical path>
      X-Ops-Content-Hash:<content hash>
      X-Ops-Timestamp:<timestamp>
      X-Ops-UserId:<user id, or for 1.1 and 1.2 the base64 SHA-1 of the user id>

  1.0 and 1.1 "encrypt" that string with the RSA private key (PKCS #1 v1.5 type-1 padding
  around the raw string, no DigestInfo: OpenSSL's ``RSA_private_encrypt``); 1.2 is an ordinary
  RSASSA-PKCS1-v1_5 signature with SHA-1 over it.
* Version 1.3 is RSASSA-PKCS1-v1_5 with SHA-256 over::

      Method:POST
      Path:<canonical path>
      X-Ops-Content-Hash:<content hash>
      X-Ops-Sign:version=1.3
      X-Ops-Timestamp:<timestamp>
      X-Ops-UserId:<user id>
      X-Ops-Server-API-Version:<X-Ops-Server-API-Version header, default 0>

The verifying side is split in two so the HTTP layer can look the principal up in between:
:func:`parse_signed_headers` checks the headers and the clock, :func:`verify_signature` checks
the body hash and the signature against the principal's keys. Both raise
:class:`~pushy_appliance.errors.AuthError` with the statuses and messages of the Chef Server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import AuthError, KeyFormatError
from .paths import normalize_path

__all__ = [
    "MAX_CLOCK_SKEW",
    "SUPPORTED_VERSIONS",
    "WWW_AUTHENTICATE",
    "SignedRequest",
    "canonical_path",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "parse_signed_headers",
    "private_key_pem",
    "public_key_pem",
    "sign_request",
    "unknown_principal",
    "verify_signature",
]

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
"""Protocol versions this module signs and verifies."""

WWW_AUTHENTICATE = 'X-Ops-Sign version="1.0" version="1.1" version="1.2" version="1.3"'
"""``WWW-Authenticate`` value of 401 responses from principal and signature checks."""

MAX_CLOCK_SKEW = 900.0
"""A timestamp this many seconds or more away from the server's clock is refused."""

_ALGORITHM_FOR_VERSION = {"1.0": "sha1", "1.1": "sha1", "1.2": "sha1", "1.3": "sha256"}
_REQUIRED_HEADERS = ("X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_SIGNATURE_LINE = 60
# PKCS #1 v1.5: 0x00 0x01, at least eight 0xFF bytes, 0x00, then the message.
_PKCS1_OVERHEAD = 11


class _HeaderSource(Protocol):
    """Anything with ``items()`` over header names and values (a dict, werkzeug ``Headers``)."""

    def items(self) -> Iterable[tuple[str, str]]: ...


# --------------------------------------------------------------------------- keys


def generate_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """Generate a new RSA key for a user or client, as ``knife`` would.

    Args:
        bits: modulus size; 2048 is what Chef Server creates.

    Returns:
        The new private key (public exponent 65537).
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    """Serialize a private key as Chef writes ``client.pem``: PKCS #1, unencrypted.

    Args:
        key: the private key.

    Returns:
        PEM text starting with ``-----BEGIN RSA PRIVATE KEY-----``.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_pem(key_or_public: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """Serialize the public half of a key as the Chef Server API returns it (SPKI).

    Args:
        key_or_public: a private key (its public half is taken) or a public key.

    Returns:
        PEM text starting with ``-----BEGIN PUBLIC KEY-----``.
    """
    public = (
        key_or_public.public_key()
        if isinstance(key_or_public, rsa.RSAPrivateKey)
        else key_or_public
    )
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _pem_bytes(pem: str | bytes) -> bytes:
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    return data.strip() + b"\n"


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    """Read an unencrypted RSA private key in PKCS #1 or PKCS #8 PEM form.

    Args:
        pem: the PEM text.

    Returns:
        The private key.

    Raises:
        KeyFormatError: not PEM, not a private key, encrypted, or not RSA. The message names
            the problem and never contains key material.
    """
    data = _pem_bytes(pem)
    if b"-----BEGIN" not in data:
        raise KeyFormatError("not a PEM private key (no -----BEGIN line)")
    if b"PRIVATE KEY-----" not in data:
        raise KeyFormatError("not a private key: the PEM block is not a PRIVATE KEY")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFormatError(
            "the private key is encrypted; an unencrypted key is required"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"cannot read the private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFormatError(f"not an RSA key ({type(key).__name__}); Chef keys are RSA")
    return key


def load_public_key(pem: str | bytes) -> rsa.RSAPublicKey:
    """Read an RSA public key: SPKI, PKCS #1 (``RSA PUBLIC KEY``) or an X.509 certificate.

    Args:
        pem: the PEM text, in any of the three forms the Chef Server accepts.

    Returns:
        The public key.

    Raises:
        KeyFormatError: not PEM, a private key, unreadable, or not RSA.
    """
    data = _pem_bytes(pem)
    if b"-----BEGIN" not in data:
        raise KeyFormatError("not a PEM public key (no -----BEGIN line)")
    if b"PRIVATE KEY-----" in data:
        raise KeyFormatError("a private key was given where a public key is expected")
    public: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            public = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"cannot read the public key: {exc}") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise KeyFormatError(f"not an RSA key ({type(public).__name__}); Chef keys are RSA")
    return public


# --------------------------------------------------------------------------- canonical form


def canonical_path(path: str) -> str:
    """The path as it is signed.

    Args:
        path: the request path, possibly with a query string.

    Returns:
        The path without the query string, in the normal form of
        :func:`~pushy_appliance.paths.normalize_path`: runs of ``/`` collapsed and a trailing
        ``/`` removed; ``/`` (and the empty path) give ``/``.
    """
    return normalize_path(path.split("?", 1)[0])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _content_hash(body: bytes, version: str) -> str:
    if version == "1.3":
        return _b64(hashlib.sha256(body).digest())
    return _b64(hashlib.sha1(body).digest())


def _canonical_time(timestamp: datetime) -> str:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def _canonical_request(
    *,
    method: str,
    path: str,
    content_hash: str,
    timestamp: str,
    user_id: str,
    version: str,
    server_api_version: str,
) -> bytes:
    """The string that is signed, for any supported ``version``."""
    cpath = canonical_path(path)
    if version == "1.3":
        lines = [
            f"Method:{method.upper()}",
            f"Path:{cpath}",
            f"X-Ops-Content-Hash:{content_hash}",
            f"X-Ops-Sign:version={version}",
            f"X-Ops-Timestamp:{timestamp}",
            f"X-Ops-UserId:{user_id}",
            f"X-Ops-Server-API-Version:{server_api_version}",
        ]
    else:
        hashed_user = (
            user_id if version == "1.0" else _b64(hashlib.sha1(user_id.encode("utf-8")).digest())
        )
        lines = [
            f"Method:{method.upper()}",
            f"Hashed Path:{_b64(hashlib.sha1(cpath.encode('utf-8')).digest())}",
            f"X-Ops-Content-Hash:{content_hash}",
            f"X-Ops-Timestamp:{timestamp}",
            f"X-Ops-UserId:{hashed_user}",
        ]
    return "\n".join(lines).encode("utf-8")


# --------------------------------------------------------------------------- raw RSA (1.0, 1.1)


def _private_encrypt(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """OpenSSL's ``RSA_private_encrypt`` with PKCS #1 v1.5 padding, which ``cryptography`` lacks.

    The private operation uses the CRT with RSA blinding (so its timing does not depend on the
    message) and is checked with the public operation before the result is returned.
    """
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    size = (n.bit_length() + 7) // 8
    if len(message) > size - _PKCS1_OVERHEAD:
        raise KeyFormatError(
            f"a {n.bit_length()}-bit key cannot sign {len(message)} bytes with protocol 1.0/1.1 "
            f"(at most {size - _PKCS1_OVERHEAD}); use protocol 1.3"
        )
    padded = b"\x00\x01" + b"\xff" * (size - 3 - len(message)) + b"\x00" + message
    m = int.from_bytes(padded, "big")
    while True:
        r = secrets.randbelow(n - 2) + 2
        try:
            r_inv = pow(r, -1, n)
        except ValueError:  # r shares a factor with n: astronomically unlikely, draw again
            continue
        break
    blinded = (m * pow(r, e, n)) % n
    p, q = numbers.p, numbers.q
    m1 = pow(blinded % p, numbers.dmp1, p)
    m2 = pow(blinded % q, numbers.dmq1, q)
    h = (numbers.iqmp * (m1 - m2)) % p
    s = ((m2 + h * q) * r_inv) % n
    if pow(s, e, n) != m:
        raise KeyFormatError("the RSA private key is inconsistent (signature check failed)")
    return s.to_bytes(size, "big")


def _public_decrypt(public: rsa.RSAPublicKey, signature: bytes) -> bytes | None:
    """OpenSSL's ``RSA_public_decrypt`` with PKCS #1 v1.5 padding; ``None`` when it fails."""
    try:
        return public.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return None


# --------------------------------------------------------------------------- signing


def sign_request(
    method: str,
    path: str,
    body: bytes,
    user_id: str,
    key: rsa.RSAPrivateKey,
    *,
    version: str = "1.3",
    timestamp: datetime,
    server_api_version: str = "0",
) -> dict[str, str]:
    """Sign a request as a Chef client would.

    Args:
        method: the HTTP method (any case).
        path: the request path; a query string is ignored.
        body: the exact body bytes that will be sent (``b""`` for none).
        user_id: the user or client name.
        key: the user's or client's private key.
        version: the protocol version, one of :data:`SUPPORTED_VERSIONS`.
        timestamp: the signing time, from the caller's clock; a naive value is taken as UTC.
        server_api_version: value of ``X-Ops-Server-API-Version`` (signed in 1.3 only).

    Returns:
        The headers to add: ``X-Ops-Sign``, ``X-Ops-UserId``, ``X-Ops-Timestamp``,
        ``X-Ops-Content-Hash``, ``X-Ops-Authorization-1..N`` and, for 1.3,
        ``X-Ops-Server-API-Version``.

    Raises:
        ValueError: ``version`` is not supported (a programming error).
        KeyFormatError: the key is too small for a 1.0 canonical string with a long user id.
    """
    if version not in _ALGORITHM_FOR_VERSION:
        raise ValueError(f"unsupported signing protocol version {version!r}")
    when = _canonical_time(timestamp)
    content_hash = _content_hash(body, version)
    canonical = _canonical_request(
        method=method,
        path=path,
        content_hash=content_hash,
        timestamp=when,
        user_id=user_id,
        version=version,
        server_api_version=server_api_version,
    )
    if version == "1.3":
        signature = key.sign(canonical, padding.PKCS1v15(), hashes.SHA256())
    elif version == "1.2":
        signature = key.sign(canonical, padding.PKCS1v15(), hashes.SHA1())
    else:
        signature = _private_encrypt(key, canonical)
    headers = {
        "X-Ops-Sign": f"algorithm={_ALGORITHM_FOR_VERSION[version]};version={version}",
        "X-Ops-UserId": user_id,
        "X-Ops-Timestamp": when,
        "X-Ops-Content-Hash": content_hash,
    }
    encoded = _b64(signature)
    for index in range(0, len(encoded), _SIGNATURE_LINE):
        line_number = index // _SIGNATURE_LINE + 1
        headers[f"X-Ops-Authorization-{line_number}"] = encoded[index : index + _SIGNATURE_LINE]
    if version == "1.3":
        headers["X-Ops-Server-API-Version"] = server_api_version
    return headers


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class SignedRequest:
    """The authentication headers of a request, checked for presence, version and clock.

    Attributes:
        user_id: the ``X-Ops-UserId`` principal name.
        version: the protocol version from ``X-Ops-Sign``.
        timestamp: the signing time (timezone-aware, UTC).
        content_hash: the ``X-Ops-Content-Hash`` value as sent.
        signature: the decoded ``X-Ops-Authorization-N`` lines (``b""`` when absent or not
            base64; :func:`verify_signature` then refuses it).
        server_api_version: ``X-Ops-Server-API-Version``, ``"0"`` when absent.
    """

    user_id: str
    version: str
    timestamp: datetime
    content_hash: str
    signature: bytes
    server_api_version: str


def _parse_sign_description(value: str) -> str | None:
    """The version named by an ``X-Ops-Sign`` value, or ``None`` when it is unsupported."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        name, sep, field = part.partition("=")
        if not sep:
            return None
        fields[name.strip().lower()] = field.strip()
    version = fields.get("version")
    if version is None or version not in _ALGORITHM_FOR_VERSION:
        return None
    algorithm = fields.get("algorithm")
    if algorithm is not None and algorithm.lower() != _ALGORITHM_FOR_VERSION[version]:
        return None
    return version


def _parse_timestamp(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return None
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _decode_signature(lowered: Mapping[str, str]) -> bytes:
    lines: list[str] = []
    index = 1
    while (line := lowered.get(f"x-ops-authorization-{index}")) is not None:
        lines.append(line.strip())
        index += 1
    try:
        return base64.b64decode("".join(lines))
    except (binascii.Error, ValueError):
        return b""


def parse_signed_headers(
    headers: Mapping[str, str] | _HeaderSource, *, now: datetime
) -> SignedRequest:
    """Check a request's authentication headers, short of the signature itself.

    The checks run in the Chef Server's order and the first failure is raised: required
    headers present and non-empty, a supported ``X-Ops-Sign``, a parsable timestamp, a
    timestamp less than :data:`MAX_CLOCK_SKEW` seconds from ``now``.

    Args:
        headers: the request headers; names are matched case-insensitively (a dict with any
            case, or werkzeug/Quart ``Headers``).
        now: the server's current time; a naive value is taken as UTC.

    Returns:
        The parsed request, to look the principal up by ``user_id`` and then pass to
        :func:`verify_signature`.

    Raises:
        AuthError: 400 ``missing required authentication header(s) 'X-Ops-UserId', …`` (every
            missing one), 400 ``Unsupported authentication protocol version``, 401
            ``bad header(s) 'X-Ops-Timestamp'``, or 401 ``Failed to authenticate as USER.
            Synchronize the clock on your host.``
    """
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)
    present = {name: lowered.get(name.lower(), "").strip() for name in _REQUIRED_HEADERS}
    missing = [name for name, value in present.items() if not value]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        raise AuthError(400, f"missing required authentication header(s) {listed}")
    user_id = present["X-Ops-UserId"]
    version = _parse_sign_description(present["X-Ops-Sign"])
    if version is None:
        raise AuthError(400, "Unsupported authentication protocol version")
    timestamp = _parse_timestamp(present["X-Ops-Timestamp"])
    if timestamp is None:
        raise AuthError(401, "bad header(s) 'X-Ops-Timestamp'")
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if abs((now - timestamp).total_seconds()) >= MAX_CLOCK_SKEW:
        raise AuthError(
            401, f"Failed to authenticate as {user_id}. Synchronize the clock on your host."
        )
    return SignedRequest(
        user_id=user_id,
        version=version,
        timestamp=timestamp,
        content_hash=present["X-Ops-Content-Hash"],
        signature=_decode_signature(lowered),
        server_api_version=lowered.get("x-ops-server-api-version", "").strip() or "0",
    )


def _invalid_signature(user_id: str) -> AuthError:
    return AuthError(
        401,
        f"Invalid signature for user or client '{user_id}'",
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    )


def _verifies(public: rsa.RSAPublicKey, req: SignedRequest, canonical: bytes) -> bool:
    if req.version in ("1.0", "1.1"):
        recovered = _public_decrypt(public, req.signature)
        return recovered is not None and hmac.compare_digest(recovered, canonical)
    algorithm: hashes.HashAlgorithm = hashes.SHA256() if req.version == "1.3" else hashes.SHA1()
    try:
        public.verify(req.signature, canonical, padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_signature(
    req: SignedRequest,
    method: str,
    path: str,
    body: bytes,
    keys: Sequence[rsa.RSAPublicKey],
) -> int:
    """Check a request's body hash and signature; return the index of the key that verified it.

    Args:
        req: from :func:`parse_signed_headers`.
        method: the request's HTTP method.
        path: the request path (a query string is ignored).
        body: the raw request body.
        keys: the principal's public keys; the request is accepted if any one verifies.

    Raises:
        AuthError: 401 ``Invalid signature for user or client 'USER'`` with
            ``WWW-Authenticate``, when the content hash does not match the body, there is no
            signature, or no key verifies it.
    """
    expected_hash = _content_hash(body, req.version)
    if not hmac.compare_digest(expected_hash.encode("ascii"), req.content_hash.encode("utf-8")):
        raise _invalid_signature(req.user_id)
    if not req.signature:
        raise _invalid_signature(req.user_id)
    canonical = _canonical_request(
        method=method,
        path=path,
        content_hash=expected_hash,
        timestamp=_canonical_time(req.timestamp),
        user_id=req.user_id,
        version=req.version,
        server_api_version=req.server_api_version,
    )
    for index, public in enumerate(keys):
        if _verifies(public, req, canonical):
            return index
    raise _invalid_signature(req.user_id)


def unknown_principal(user_id: str) -> AuthError:
    """The error for a request signed by a user or client that does not exist (here).

    Args:
        user_id: the ``X-Ops-UserId`` of the request.

    Returns:
        401 ``Failed to authenticate as 'USER'. Ensure that your node_name and client key
        are correct.`` with ``WWW-Authenticate``, for the caller to raise.
    """
    return AuthError(
        401,
        f"Failed to authenticate as '{user_id}'. "
        "Ensure that your node_name and client key are correct.",
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    )
