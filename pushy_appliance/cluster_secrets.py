"""The secrets the appliances of one cluster share, and the bundle that carries them (pure).

Every appliance of a cluster serves the same fleet, so they share what identifies the
cluster (``docs/SCALE-OUT.md`` §10):

* ``keys/pivotal.pem`` and ``keys/admin.pem``: the superuser's and the first admin's private
  keys. On a shared database their public halves are in the identity records the first
  appliance wrote; another appliance's ``credentials`` must name the same keys.
* ``tls/ca.pem`` and ``tls/ca.key``: the CA. Each appliance issues its own server
  certificate from it at its first start (``tls.write_tls_material``), so agents trust every
  appliance with one ``ca_cert``.

The server certificate and key, ``credentials``, ``run/`` and the store are each appliance's
own and never shared.

The bundle (``pushy cluster export``) is UTF-8 JSON, written with mode 0600::

    {"format": "pushy-cluster-secrets", "version": 1,
     "files": {"keys/pivotal.pem": "-----BEGIN RSA PRIVATE KEY-----\\n…", …}}

It holds private keys in clear, like the data directory itself: move it as you would the
keys (``scp``, then delete it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from . import chef_auth
from .errors import ConfigError, KeyFormatError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "SECRET_FILES",
    "check_secrets",
    "conflicts",
    "decode_bundle",
    "encode_bundle",
    "issued_by",
]

SECRET_FILES = ("keys/pivotal.pem", "keys/admin.pem", "tls/ca.pem", "tls/ca.key")
"""The shared files, as paths relative to a data directory."""

BUNDLE_FORMAT = "pushy-cluster-secrets"
BUNDLE_VERSION = 1


def check_secrets(secrets: Mapping[str, bytes], source: str) -> None:
    """Check that ``secrets`` holds every shared file, each usable.

    Args:
        secrets: file name (one of :data:`SECRET_FILES`) → content; others are refused.
        source: what errors call where they came from (a directory or a bundle).

    Raises:
        ConfigError: naming every missing file at once, or the first file that is not what
            it should be (a key that does not load, a CA key that is not the certificate's).
    """
    unknown = sorted(set(secrets) - set(SECRET_FILES))
    if unknown:
        raise ConfigError(source, None, f"not a shared secret: {', '.join(unknown)}")
    missing = [name for name in SECRET_FILES if name not in secrets]
    if missing:
        raise ConfigError(
            source,
            None,
            f"missing {', '.join(missing)} (an appliance's data directory has them once "
            "pushy serve started on it; a tls.cert of your own leaves no CA to share)",
        )
    for name in ("keys/pivotal.pem", "keys/admin.pem"):
        try:
            chef_auth.load_private_key(secrets[name])
        except KeyFormatError as e:
            raise ConfigError(source, name, f"not a usable private key: {e.reason}") from None
    try:
        ca = x509.load_pem_x509_certificate(secrets["tls/ca.pem"])
    except ValueError as e:
        raise ConfigError(source, "tls/ca.pem", f"not a PEM certificate: {e}") from None
    try:
        ca_key = serialization.load_pem_private_key(secrets["tls/ca.key"], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(source, "tls/ca.key", f"not a usable private key: {e}") from None
    if _spki(ca_key.public_key()) != _spki(ca.public_key()):
        raise ConfigError(source, "tls/ca.key", "is not the key of tls/ca.pem")


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def conflicts(shared: Mapping[str, bytes], existing: Mapping[str, bytes]) -> list[str]:
    """The shared files that ``existing`` (a target's) already holds with other contents.

    Args:
        shared: the cluster's secrets.
        existing: the same names, as far as the target has them.

    Returns:
        The names, in :data:`SECRET_FILES` order.
    """
    return [n for n in SECRET_FILES if n in existing and existing[n] != shared.get(n)]


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether the PEM certificate ``cert_pem`` was signed by the CA ``ca_pem``.

    An unreadable certificate was not.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def encode_bundle(secrets: Mapping[str, bytes]) -> bytes:
    """The bundle of ``secrets`` (checked first).

    Raises:
        ConfigError: as :func:`check_secrets`.
    """
    check_secrets(secrets, "bundle")
    files = {name: secrets[name].decode("ascii") for name in SECRET_FILES}
    doc = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "files": files}
    return (json.dumps(doc, indent=1) + "\n").encode()


def decode_bundle(data: bytes, source: str) -> dict[str, bytes]:
    """The secrets of a bundle, checked.

    Args:
        data: the bundle's bytes.
        source: what errors call it (its path).

    Raises:
        ConfigError: it is not a bundle of this version, or :func:`check_secrets` refuses it.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise ConfigError(
            source, None, "neither a data directory nor a bundle from pushy cluster export"
        )
    if doc.get("version") != BUNDLE_VERSION:
        raise ConfigError(source, None, f"bundle version {doc.get('version')!r} is not 1")
    files = doc.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ConfigError(source, "files", "expected a table of file names and PEM texts")
    secrets = {str(name): text.encode() for name, text in files.items()}
    check_secrets(secrets, source)
    return secrets
