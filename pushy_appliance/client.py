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
from datetime import UTC, datetime, timedelta
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
from .replay import REFUSED_HEADER

__all__ = [
    "CredentialSources",
    "Credentials",
    "PushyClient",
    "load_credentials",
    "open_client",
    "split_org_url",
]


_REPLAY_RETRIES = 2
"""Times a request refused as a replay is signed again, each a second further ahead."""


@dataclasses.dataclass(frozen=True, slots=True)
class CredentialSources:
    """Where each part of a :class:`Credentials` came from, in words for messages.

    Each is ``flag --server``, ``environment PUSHY_SERVER``, ``profile NAME of FILE``,
    ``data directory DIR, named by …`` or, for credentials built in code, ``given``.

    Attributes:
        server: of the server URL.
        user: of the user or client name.
        key: of the key file.
        trust: of the TLS trust (CA file or fingerprint; ``system`` for the system's CAs).
    """

    server: str = "given"
    user: str = "given"
    key: str = "given"
    trust: str = "given"


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """Who to be and where to go.

    Attributes:
        server_url: the org URL, ``https://host:10003/organizations/ORG``.
        user: the user or client name that signs.
        key_file: its private key (PEM).
        ca_file: CA certificate to trust, or ``None``.
        fingerprint: pinned server certificate fingerprint (``SHA256:…``), or ``None``.
        sources: where each of these came from (not compared).
    """

    server_url: str
    user: str
    key_file: str
    ca_file: str | None = None
    fingerprint: str | None = None
    sources: CredentialSources = dataclasses.field(
        default=CredentialSources(), compare=False, repr=False
    )

    @property
    def base_url(self) -> str:
        return split_org_url(self.server_url)[0]

    @property
    def org(self) -> str:
        return split_org_url(self.server_url)[1]

    @property
    def trust(self) -> str:
        """The TLS trust in words: ``fingerprint …``, ``CA FILE``, ``the system's CAs``."""
        if urlsplit(self.server_url).scheme == "http":
            return "none (plain HTTP)"
        if self.fingerprint:
            return f"fingerprint {self.fingerprint}"
        if self.ca_file:
            return f"CA {self.ca_file}"
        return "the system's CAs"

    def describe(self) -> list[str]:
        """One line per part: its value and its source; never the key's contents.

        Returns:
            Lines ``server URL (from SOURCE)``, ``user …``, ``key FILE …``, ``trust …``.
        """
        s = self.sources
        return [
            f"server {self.server_url} (from {s.server})",
            f"user   {self.user} (from {s.user})",
            f"key    {self.key_file} (from {s.key})",
            f"trust  {self.trust} (from {s.trust})",
        ]


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


def _same_server(a: str, b: str) -> bool:
    """Whether two URLs name the same scheme, host and port."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme.lower(), pa.netloc.lower()) == (pb.scheme.lower(), pb.netloc.lower())


class _Resolver:
    """Fills server, user, key and trust from one source after another, first match wins,
    noting where each came from."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.ca_file: str | None = None
        self.fingerprint: str | None = None

    def offer(self, field: str, value: Any, source: str) -> None:
        if field not in self.values and isinstance(value, str) and value:
            self.values[field] = value
            self.sources[field] = source

    def offer_trust(self, ca_file: str | None, fingerprint: str | None, source: str) -> None:
        """Take both trust settings of the first source that gives either: a CA file of one
        source and a fingerprint of another are never mixed."""
        if "trust" not in self.sources and (ca_file or fingerprint):
            self.ca_file, self.fingerprint = ca_file, fingerprint
            self.sources["trust"] = source

    @property
    def complete(self) -> bool:
        return all(f in self.values for f in ("server", "user", "key"))


_NO_TRUST = (
    "the default: no --ca-cert/--fingerprint, PUSHY_CA_CERT/PUSHY_FINGERPRINT, profile"
    " ssl_ca_file for this server or data directory CA"
)


def _data_dir_source(data_dir: str | None, env: Mapping[str, str], path: Path) -> str:
    if data_dir:
        how = "named by --data-dir"
    elif env.get("PUSHY_DATA_DIR"):
        how = "named by PUSHY_DATA_DIR"
    else:
        how = "the default, as neither --data-dir nor PUSHY_DATA_DIR is set"
    return f"data directory {path}, {how}"


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
    user_flag: str = "--user",
) -> Credentials:
    """Resolve credentials (``APPLIANCE.md`` §1), noting where each part came from.

    Server URL, user and key: each from the first of the flags, ``PUSHY_SERVER`` /
    ``PUSHY_USER`` / ``PUSHY_KEY``, the profile of ``~/.chef/credentials``, the data
    directory's ``credentials``, and last, when no data directory is named (``--data-dir``,
    ``PUSHY_DATA_DIR``), the ``credentials`` of ``pushy sandbox``'s default data directory.

    TLS trust is resolved on its own, whichever source gave the rest: ``--ca-cert`` /
    ``--fingerprint``, else ``PUSHY_CA_CERT`` / ``PUSHY_FINGERPRINT``, else the profile's
    ``ssl_ca_file`` / ``ssl_fingerprint`` when that profile names the same server, else the
    data directory's CA (``tls/ca.pem``) when it exists, else the system's CAs.

    Args:
        server, user, key, profile, ca_file, fingerprint, data_dir: the flags (``None``:
            not given).
        environ: the environment (default ``os.environ``).
        home: the home directory whose ``.chef/credentials`` is read.
        user_flag: the flag that gave ``user``, for messages (``--user`` or ``--sign-as``).

    Raises:
        ConfigError: nothing names a server, user and key; a named profile does not exist;
            a credentials file cannot be read; the server URL is not an org URL.
    """
    env = os.environ if environ is None else environ
    home = home or Path.home()
    r = _Resolver()
    for field, flag, value in (
        ("server", "--server", server),
        ("user", user_flag, user),
        ("key", "--key", key),
    ):
        r.offer(field, value, f"flag {flag}")
    # a fingerprint wins over a CA file of the same source (client_ssl), so it is named
    r.offer_trust(ca_file, fingerprint, "flag --fingerprint" if fingerprint else "flag --ca-cert")
    for field, var in (("server", "PUSHY_SERVER"), ("user", "PUSHY_USER"), ("key", "PUSHY_KEY")):
        r.offer(field, env.get(var), f"environment {var}")
    env_ca, env_fp = env.get("PUSHY_CA_CERT"), env.get("PUSHY_FINGERPRINT")
    r.offer_trust(
        env_ca,
        env_fp,
        "environment PUSHY_FINGERPRINT" if env_fp else "environment PUSHY_CA_CERT",
    )

    profile_name = profile or env.get("PUSHY_PROFILE") or "default"
    chef_file = home / ".chef" / "credentials"
    if not r.complete or "trust" not in r.sources:
        prof = _read_profile(chef_file, profile_name, explicit=profile is not None)
        if prof is not None:
            _offer_profile(r, prof, chef_file, f"profile {profile_name} of {chef_file}")

    directory = resolve_data_dir(data_dir, dict(env))
    dir_source = _data_dir_source(data_dir, env, directory)
    if not r.complete:
        prof = _read_profile(directory / "credentials", "default", explicit=False)
        if prof is not None:
            _offer_profile(r, prof, directory / "credentials", dir_source)
    ca = directory / "tls" / "ca.pem"
    if "trust" not in r.sources and ca.is_file():
        r.offer_trust(str(ca), None, dir_source)
    if not r.complete and not data_dir and not env.get("PUSHY_DATA_DIR"):
        sandbox = sandbox_data_dir(env)
        prof = _read_profile(sandbox / "credentials", "default", explicit=False)
        if prof is not None:
            _offer_profile(r, prof, sandbox / "credentials", f"sandbox data directory {sandbox}")

    missing = [
        n
        for f, n in (("server", "server URL"), ("user", "user"), ("key", "key"))
        if f not in r.values
    ]
    if missing:
        raise ConfigError(
            "credentials",
            None,
            "no " + ", ".join(missing) + " found: give --server/--user/--key, set PUSHY_SERVER/"
            "PUSHY_USER/PUSHY_KEY, add a profile to ~/.chef/credentials, or run on the server box"
            " with --data-dir",
        )
    url = r.values["server"]
    try:
        split_org_url(url)
    except ConfigError as e:
        raise ConfigError(f"server URL (from {r.sources['server']})", None, e.reason) from None
    sources = CredentialSources(
        server=r.sources["server"],
        user=r.sources["user"],
        key=r.sources["key"],
        trust=r.sources.get("trust", _NO_TRUST),
    )
    return Credentials(url, r.values["user"], r.values["key"], r.ca_file, r.fingerprint, sources)


def _offer_profile(r: _Resolver, prof: Mapping[str, Any], path: Path, source: str) -> None:
    """Offer a credentials profile's values; its trust only when it names the same server."""
    r.offer("server", prof.get("chef_server_url"), source)
    r.offer("user", prof.get("client_name") or prof.get("node_name"), source)
    r.offer("key", _expand(prof.get("client_key"), path), source)
    named = prof.get("chef_server_url")
    server = r.values.get("server")
    if isinstance(named, str) and server is not None and _same_server(named, server):
        fp = prof.get("ssl_fingerprint")
        r.offer_trust(
            _expand(prof.get("ssl_ca_file"), path),
            fp if isinstance(fp, str) and fp else None,
            source,
        )


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
        if explicit:
            raise ConfigError(
                str(path), name, "no such profile (the file does not exist)"
            ) from None
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

    def _headers(
        self, method: str, path: str, body: bytes, accept: str, ahead: int = 0
    ) -> dict[str, str]:
        when = datetime.now(UTC) + timedelta(seconds=ahead)
        headers = chef_auth.sign_request(
            method, path, body, self.creds.user, self._key, timestamp=when
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
        url = self._origin
        # The same request signed twice within a second carries the same signature, which the
        # server refuses as a replay: such a refusal is answered by signing again a second
        # (then two) ahead, within the server's 15-minute clock window.
        for ahead in range(_REPLAY_RETRIES + 1):
            headers = self._headers(method, path, raw, accept, ahead)
            try:
                response = await self.http.request(
                    method, url + path, content=raw or None, headers=headers, params=params
                )
            except httpx.HTTPError as e:
                raise await self._transport_error(e) from None
            if response.headers.get(REFUSED_HEADER[0]) != REFUSED_HEADER[1]:
                break
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
