"""The public URL of a request, pure: what a ``Host`` header may hold and which scheme,
host and port go into the ``uri`` and ``Location`` the API returns.

A client controls ``Host`` and ``X-Forwarded-Proto``; neither is reflected unchecked
(``javascript://…`` is not a scheme we answer with). The rule, in order:

* scheme: ``X-Forwarded-Proto``'s first value when it is ``http`` or ``https`` (any case),
  else the scheme the request came in on;
* host: the configured ``server_name`` when set, else the request's ``Host`` when it is a
  valid ``host[:port]`` (a DNS name of labels of 1-63 letters, digits, ``-`` or ``_``, at
  most 253 characters; a dotted IPv4 address; or a bracketed IPv6 address), else the address
  of the listener that took the request;
* port: with a valid ``Host``, its port, or none when it names none (with ``server_name``
  too: it is the port the client reached, which a proxy may map); without one, the
  listener's own port.

The API refuses a request whose ``Host`` is present but invalid with 400 before routing
(``http.RequireValidHost``), so in practice the third case is a request without ``Host``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["HostPort", "format_authority", "parse_host", "public_base_url", "valid_host_name"]

HostPort = tuple[str, int | None]
"""A host (an IPv6 address without brackets) and a port, or ``None`` for no port."""

_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_SCHEMES: Final = ("http", "https")


def valid_host_name(name: str) -> bool:
    """Whether ``name`` is a DNS name (optionally with a trailing dot) or an IPv4 address."""
    if not name.isascii() or len(name.removesuffix(".")) > 253:
        return False
    labels = name.removesuffix(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


def _port(text: str) -> int | None:
    if not _PORT.fullmatch(text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def parse_host(value: str) -> HostPort | None:
    """Split a ``Host`` header into host and port.

    Args:
        value: the header's value.

    Returns:
        ``(host, port or None)``, the IPv6 address without its brackets; ``None`` when the
        value is not a valid ``host[:port]`` by the module docstring's rule.
    """
    if not value.isascii() or len(value) > 300:
        return None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return None
        try:
            address = ipaddress.IPv6Address(value[1:close])
        except ValueError:
            return None
        rest = value[close + 1 :]
        if not rest:
            return str(address), None
        port = _port(rest[1:]) if rest.startswith(":") else None
        return (str(address), port) if port is not None else None
    host, sep, port_text = value.partition(":")
    if not valid_host_name(host):
        return None
    if not sep:
        return host, None
    port = _port(port_text)
    return (host, port) if port is not None else None


def format_authority(host: str, port: int | None) -> str:
    """``host[:port]`` for a URL, an IPv6 address in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def public_base_url(
    *,
    server_name: str | None,
    host_header: str | None,
    forwarded_proto: str | None,
    scheme: str,
    listener: HostPort | None,
) -> str:
    """``scheme://host[:port]`` of a request, by the module docstring's rule.

    Args:
        server_name: the configured ``server_name``, or ``None``.
        host_header: the request's ``Host``, or ``None``.
        forwarded_proto: the request's ``X-Forwarded-Proto``, or ``None``.
        scheme: the scheme the request came in on (``http`` or ``https``).
        listener: the address of the listener that took the request, if known.

    Returns:
        The base URL, without a trailing slash.
    """
    proto = (forwarded_proto or "").split(",")[0].strip().lower()
    chosen_scheme = proto if proto in _SCHEMES else scheme
    parsed = parse_host(host_header) if host_header else None
    if server_name:
        host = server_name
        port = parsed[1] if parsed is not None else (listener[1] if listener else None)
    elif parsed is not None:
        host, port = parsed
    elif listener is not None:
        host, port = listener
    else:
        host, port = "localhost", None
    return f"{chosen_scheme}://{format_authority(host, port)}"
