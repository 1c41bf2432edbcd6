"""A signed HTTP client for the appliance's API, used by the CLI and the agent.

Requests are signed with Chef's protocol 1.3 by :func:`chef_auth.sign_request`. TLS trust is
a CA file, a pinned certificate fingerprint, or (plain ``http://``) none. Transport failures
become :class:`ServerUnreachableError` or :class:`TLSUntrustedError` (carrying the server's
fingerprint to pin); error statuses become :class:`ServerRefusedError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from . import chef_auth, tls
from .config_files import resolve_data_dir, sandbox_data_dir
from .errors import (
    ClientError,
    ConfigError,
    KeyFormatError,
    ServerRefusedError,
    ServerUnreachableError,
    TLSUntrustedError,
)

__all__ = [
    "Credentials",
    "PushyClient",
    "load_credentials",
    "open_client",
    "split_org_url",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """Who to be and where to go.

    Attributes:
        server_url: the org URL, ``https://host:10003/organizations/ORG``.
        user: the user or client name that signs.
        key_file: its private key (PEM).
        ca_file: CA certificate to trust, or ``None``.
        fingerprint: pinned server certificate fingerprint (``SHA256:…``), or ``None``.
    """

    server_url: str
    user: str
    key_file: str
    ca_file: str | None = None
    fingerprint: str | None = None

    @property
    def base_url(self) -> str:
        return split_org_url(self.server_url)[0]

    @property
    def org(self) -> str:
        return split_org_url(self.server_url)[1]


def split_org_url(url: str) -> tuple[str, str]:
    """``https://h:1/organizations/ORG`` → ``("https://h:1", "ORG")``.

    Raises:
        ConfigError: the URL is not an org URL.
    """
    parts = urlsplit(url.rstrip("/"))
    segs = [s for s in parts.path.split("/") if s]
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("server URL", None, f"{url!r} is not an http(s) URL")
    if len(segs) < 2 or segs[-2] != "organizations":
        raise ConfigError(
            "server URL", None, f"{url!r} is not an org URL (https://HOST:PORT/organizations/ORG)"
        )
    prefix = "/".join(segs[:-2])
    base = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    return base, segs[-1]


def load_credentials(
    *,
    server: str | None = None,
    user: str | None = None,
    key: str | None = None,
    profile: str | None = None,
    ca_file: str | None = None,
    fingerprint: str | None = None,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Credentials:
    """Resolve credentials: flags, then ``PUSHY_*``, then ``~/.chef/credentials``, then the
    data directory's ``credentials`` (``APPLIANCE.md`` §1), and last, when no data directory
    is named (``--data-dir``, ``PUSHY_DATA_DIR``), the ``credentials`` of ``pushy sandbox``'s
    default data directory. First complete source wins per field; trust settings follow the
    same order.

    Raises:
        ConfigError: nothing names a server, user and key.
    """
    env = os.environ if environ is None else environ
    home = home or Path.home()
    server = server or env.get("PUSHY_SERVER")
    user = user or env.get("PUSHY_USER")
    key = key or env.get("PUSHY_KEY")
    ca_file = ca_file or env.get("PUSHY_CA_CERT")
    fingerprint = fingerprint or env.get("PUSHY_FINGERPRINT")
    profile_name = profile or env.get("PUSHY_PROFILE") or "default"
    sources: list[tuple[Path, str]] = [
        (home / ".chef" / "credentials", profile_name),
        (resolve_data_dir(data_dir, dict(env)) / "credentials", "default"),
    ]
    if not data_dir and not env.get("PUSHY_DATA_DIR"):
        sources.append((sandbox_data_dir(env) / "credentials", "default"))
    for path, name in sources:
        if server and user and key:
            break
        prof = _read_profile(path, name, explicit=profile is not None and path == sources[0][0])
        if prof is None:
            continue
        server = server or prof.get("chef_server_url")
        user = user or prof.get("client_name") or prof.get("node_name")
        key = key or _expand(prof.get("client_key"), path)
        ca_file = ca_file or _expand(prof.get("ssl_ca_file"), path)
        fingerprint = fingerprint or prof.get("ssl_fingerprint")
    missing = [n for n, v in (("server URL", server), ("user", user), ("key", key)) if not v]
    if missing:
        raise ConfigError(
            "credentials",
            None,
            "no " + ", ".join(missing) + " found: give --server/--user/--key, set PUSHY_SERVER/"
            "PUSHY_USER/PUSHY_KEY, add a profile to ~/.chef/credentials, or run on the server box"
            " with --data-dir",
        )
    assert server and user and key
    split_org_url(server)
    return Credentials(server, user, key, ca_file, fingerprint)


def _expand(value: Any, relative_to: Path) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = relative_to.parent / p
    return str(p)


def _read_profile(path: Path, name: str, *, explicit: bool) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(path), None, f"cannot read credentials: {e}") from None
    prof = data.get(name)
    if prof is None:
        if explicit:
            raise ConfigError(str(path), name, "no such profile")
        return None
    if not isinstance(prof, dict):
        raise ConfigError(str(path), name, "profile is not a table")
    return prof


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        err = body["error"]
        if isinstance(err, list):
            return "; ".join(str(e) for e in err)
        return str(err)
    return json.dumps(body)[:500]


class PushyClient:
    """Signed requests against one org URL. Use :func:`open_client` to make one."""

    def __init__(self, creds: Credentials, http: httpx.AsyncClient, key: rsa.RSAPrivateKey) -> None:
        self.creds = creds
        self.http = http
        self._key = key
        parts = urlsplit(creds.base_url)
        self._prefix = parts.path
        self._origin = f"{parts.scheme}://{parts.netloc}"

    def _headers(self, method: str, path: str, body: bytes, accept: str) -> dict[str, str]:
        headers = chef_auth.sign_request(
            method, path, body, self.creds.user, self._key, timestamp=datetime.now(UTC)
        )
        headers["Accept"] = accept
        headers["X-Chef-Version"] = "12.0.0"
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    def api_path(self, rest: str) -> str:
        """``<server prefix>/<rest>``: a path outside the org (``users``, ``organizations``)."""
        return f"{self._prefix}/{rest.lstrip('/')}"

    def org_path(self, rest: str) -> str:
        """``/organizations/ORG/<rest>``."""
        return f"{self._prefix}/organizations/{self.creds.org}/{rest.lstrip('/')}"

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        accept: str = "application/json",
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> httpx.Response:
        """Send a signed request; return the response when its status is in ``ok``.

        Raises:
            ServerUnreachableError, TLSUntrustedError, ServerRefusedError.
        """
        raw = b"" if body is None else json.dumps(body).encode()
        headers = self._headers(method, path, raw, accept)
        url = self._origin
        try:
            response = await self.http.request(
                method, url + path, content=raw or None, headers=headers, params=params
            )
        except httpx.HTTPError as e:
            raise await self._transport_error(e) from None
        if response.status_code not in ok:
            raise ServerRefusedError(response.status_code, _error_message(response))
        return response

    async def json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """:meth:`request` and decode the JSON body."""
        response = await self.request(method, path, body, **kw)
        return response.json()

    @asynccontextmanager
    async def stream(
        self, path: str, *, accept: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A signed streaming GET (for event feeds and following output)."""
        signed = self._headers("GET", path, b"", accept)
        signed.update(headers or {})
        url = self._origin
        try:
            async with self.http.stream(
                "GET", url + path, headers=signed, timeout=httpx.Timeout(30.0, read=None)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise ServerRefusedError(response.status_code, _error_message(response))
                yield response
        except httpx.HTTPError as e:
            raise await self._transport_error(e) from None

    async def _transport_error(self, e: httpx.HTTPError) -> ClientError:
        text = str(e) or type(e).__name__
        if _cert_verify_failed(e):
            fp = await _server_fingerprint(self.creds.base_url)
            return TLSUntrustedError(self.creds.base_url, fp, "certificate verify failed")
        return ServerUnreachableError(self.creds.base_url, text)


def _cert_verify_failed(e: BaseException) -> bool:
    """Whether a certificate verification failure is anywhere in ``e``'s chain (under trio it
    sits several exceptions deep: httpx → httpcore → trio.BrokenResourceError → ssl)."""
    cur: BaseException | None = e
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


async def _server_fingerprint(base_url: str) -> str | None:
    parts = urlsplit(base_url)
    try:
        der = await tls.fetch_server_certificate(parts.hostname or "", parts.port or 443)
    except Exception:
        return None
    return tls.fingerprint(der)


async def client_ssl(creds: Credentials) -> ssl.SSLContext | bool:
    """The TLS context for ``creds``: pinned fingerprint, CA file, or the system store."""
    parts = urlsplit(creds.base_url)
    if parts.scheme == "http":
        return False
    if creds.fingerprint:
        try:
            return await tls.pinned_client_context(
                parts.hostname or "", parts.port or 443, creds.fingerprint
            )
        except OSError as e:
            raise ServerUnreachableError(creds.base_url, str(e)) from None
    if creds.ca_file:
        return tls.client_ssl_context(ca_file=creds.ca_file)
    return True


def read_private_key(path: str) -> rsa.RSAPrivateKey:
    """Load a PEM private key file.

    Raises:
        ConfigError: the file cannot be read or holds no RSA key.
    """
    try:
        return chef_auth.load_private_key(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError(path, None, f"cannot read key: {e.strerror}") from None
    except KeyFormatError as e:
        raise ConfigError(path, None, str(e)) from None


@asynccontextmanager
async def open_client(
    creds: Credentials, *, request_timeout: float = 30.0
) -> AsyncIterator[PushyClient]:
    """An open :class:`PushyClient` for ``creds``.

    Raises:
        ConfigError: the key cannot be read.
        ServerUnreachableError / TLSUntrustedError: pinning could not complete.
    """
    key = read_private_key(creds.key_file)
    verify = await client_ssl(creds)
    async with httpx.AsyncClient(verify=verify, timeout=request_timeout, trust_env=False) as http:
        yield PushyClient(creds, http, key)
