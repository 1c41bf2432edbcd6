"""The rules of webhooks, pure: request bodies and URLs, where deliveries may go, the payload,
its signature and when a failed delivery is tried again (``docs/OPERATIONS.md``).

**URLs.** ``https://`` only, unless the organization is one of ``webhooks.allow_http_orgs``
(then ``http://`` too); a host name or an IP address; no user name or password in the URL
(the ``secret`` is the credential), no fragment; at most :data:`MAX_URL_BYTES`.

**Addresses** (:class:`AddressPolicy`), checked for every address the host resolves to, at
each delivery (a name that resolves elsewhere later is checked again: DNS rebinding), before
connecting to it:

* never one of the appliance's own listeners: a local address (loopback, the unspecified
  address, or an address of this host) with the API's or the node listener's port;
* with ``webhooks.allow`` set, only hosts named there (``hooks.example.com``, or
  ``*.example.com`` for its subdomains) or addresses within its CIDRs (``10.1.0.0/16``,
  ``127.0.0.1``);
* without it, any address except loopback, link-local (the cloud metadata address
  ``169.254.169.254`` among them), unspecified, multicast and reserved ones; an
  IPv4-mapped IPv6 address counts as its IPv4 address.

**The payload** (:func:`payload`): the event, the delivery id, the organization and the
job: id, command, who started it, when, quorum and node count; for ``job_complete`` also its
status, end and duration, node counts by status and the names of the nodes that ended
``failed``, ``timed_out``, ``crashed`` or ``aborted`` (the ones ``rerun --failed`` would run
again), cut to fit ``webhooks.max_payload_bytes``.
Encoded once per attempt as compact JSON with sorted keys: every attempt of a delivery sends
the same bytes.

**The signature** (:func:`signature`): ``sha256=`` and the hex HMAC-SHA256 of the body, keyed
by the webhook's secret (UTF-8).

**Retries** (:func:`next_attempt`): after the n-th failed attempt, the next one comes
``retry_initial × 2^(n-1)`` seconds later, at most ``retry_max_interval``; none is made later
than ``retry_for`` seconds after the delivery was queued (the delivery then ends ``failed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from ..audit.model import rfc3339
from ..errors import ValidationError
from ..jobs.model import JobEntry
from ..jobs.rerun import SELECTIONS
from ..jsonbody import MSG_JSON
from ..urls import valid_host_name

__all__ = [
    "EVENTS",
    "JOB_COMPLETE",
    "JOB_START",
    "MAX_SECRET_CHARS",
    "MAX_URL_BYTES",
    "MIN_SECRET_CHARS",
    "AddressPolicy",
    "Target",
    "WebhookRequest",
    "encode_payload",
    "next_attempt",
    "parse_allow",
    "parse_url",
    "payload",
    "signature",
    "validate_webhook_request",
]

JOB_START: Final = "job_start"
JOB_COMPLETE: Final = "job_complete"
EVENTS: Final = (JOB_START, JOB_COMPLETE)
"""``job_start``: a job was created; ``job_complete``: a job ended and no node owes it a
result any more (the job feed's ``job_complete``)."""

MAX_URL_BYTES: Final = 2048
MIN_SECRET_CHARS: Final = 16
MAX_SECRET_CHARS: Final = 512
_KEYS: Final = frozenset({"url", "events", "secret"})
_FAILED: Final = SELECTIONS["failed"] or frozenset()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where a webhook's URL points: ``scheme``, ``host`` (an IPv6 address without
    brackets), ``port`` (the scheme's default when the URL has none) and the ``path`` with
    its query (``/`` at least)."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def receiver(self) -> tuple[str, int]:
        """What the per-receiver limits count: host and port."""
        return (self.host, self.port)

    @property
    def authority(self) -> str:
        """``host[:port]`` as the ``Host`` header says it (no port when the default)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return shown if self.port == default else f"{shown}:{self.port}"


def parse_url(url: object, *, allow_http: bool) -> Target:
    """Check a webhook URL (module docstring).

    Raises:
        ValidationError: naming what is wrong.
    """
    if not isinstance(url, str) or not url:
        raise ValidationError("invalid url (expected a string)")
    if len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES or not url.isascii():
        raise ValidationError(f"invalid url (at most {MAX_URL_BYTES} ASCII characters)")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationError("invalid url (contains white space or a control character)")
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        why = "https:// or http://" if allow_http else "https:// (this organization)"
        raise ValidationError(f"invalid url (must start with {why})")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("invalid url (no user or password in it: use the secret)")
    if parts.fragment:
        raise ValidationError("invalid url (no #fragment)")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise ValidationError("invalid url (bad port)") from None
    if port == 0:
        raise ValidationError("invalid url (bad port)")
    if not host or not (_ip(host) is not None or valid_host_name(host)):
        raise ValidationError("invalid url (bad host)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, host.lower(), port or default, path)


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A checked ``POST webhooks`` body."""

    url: str
    target: Target
    events: tuple[str, ...]
    secret: str


def validate_webhook_request(body: object, *, allow_http: bool) -> WebhookRequest:
    """Check a decoded ``POST webhooks`` body: ``url``, ``events``, ``secret``.

    Raises:
        ValidationError: the first rule broken, naming the field.
    """
    if not isinstance(body, dict):
        raise ValidationError(MSG_JSON)
    if not _KEYS.issuperset(body):
        raise ValidationError("invalid key supplied")
    target = parse_url(body.get("url"), allow_http=allow_http)
    events = body.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e in EVENTS for e in events)
    ):
        raise ValidationError(f"invalid events (a list of {', '.join(EVENTS)})")
    if len(set(events)) != len(events):
        raise ValidationError("invalid events (an event is named twice)")
    secret = body.get("secret")
    if (
        not isinstance(secret, str)
        or not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS
        or "\0" in secret
    ):
        raise ValidationError(
            f"invalid secret (a string of {MIN_SECRET_CHARS} .. {MAX_SECRET_CHARS} characters)"
        )
    return WebhookRequest(str(body["url"]), target, tuple(events), secret)


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_allow(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[IPNetwork, ...]]:
    """Split ``webhooks.allow`` into host names (lower-case; ``*.`` kept) and networks.

    Raises:
        ValueError: an entry that is neither a CIDR, an address nor a host name (its text).
    """
    hosts: list[str] = []
    nets: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip()
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        name = text.removeprefix("*.")
        if not name or not valid_host_name(name):
            raise ValueError(entry)
        hosts.append(text.lower())
    return tuple(hosts), tuple(nets)


def _default_refused(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Where deliveries may connect (module docstring).

    Attributes:
        hosts: host names of ``webhooks.allow`` (``*.example.com``: its subdomains).
        nets: networks of ``webhooks.allow``.
        own_ports: the ports of the appliance's own listeners (API, nodes).
    """

    hosts: tuple[str, ...] = ()
    nets: tuple[IPNetwork, ...] = ()
    own_ports: frozenset[int] = frozenset()

    @classmethod
    def from_config(cls, allow: Iterable[str], own_ports: Iterable[int]) -> AddressPolicy:
        hosts, nets = parse_allow(allow)
        return cls(hosts, nets, frozenset(own_ports))

    @property
    def restricted(self) -> bool:
        """Whether an allow-list is set (else the default rule applies)."""
        return bool(self.hosts or self.nets)

    def _host_allowed(self, host: str) -> bool:
        host = host.lower().removesuffix(".")
        for entry in self.hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and host != entry[2:]:
                    return True
            elif host == entry.removesuffix("."):
                return True
        return False

    def refusal(self, host: str, port: int, address: str, *, local: bool) -> str | None:
        """Why a delivery to ``host`` (resolved to ``address``) on ``port`` may not connect,
        or ``None`` when it may.

        Args:
            host: the URL's host.
            port: the port to connect to.
            address: one address the host resolves to.
            local: whether ``address`` is one of this host's own (the engine finds out).
        """
        ip = _ip(address)
        if ip is None:
            return f"{address} is not an IP address"
        if port in self.own_ports and (local or ip.is_loopback or ip.is_unspecified):
            return f"{address} port {port} is one of the appliance's own listeners"
        if self.restricted:
            if self._host_allowed(host) or any(ip in net for net in self.nets):
                return None
            return f"{address} ({host}) is not in webhooks.allow"
        why = _default_refused(ip)
        return None if why is None else f"{address} is {why} (not allowed by default)"


# --- the payload ------------------------------------------------------------------------------


def payload(
    entry: JobEntry, event: str, delivery_id: str, ended_at: float | None
) -> dict[str, Any]:
    """The JSON document a delivery sends (module docstring).

    ``job_start`` tells what does not change (the job's id, command, requester, creation
    time, quorum and node count); ``job_complete`` adds how it ended (``status``,
    ``ended_at``, ``duration_s``, node counts by status, the failed nodes' names). Either is
    the same document at every attempt.

    Args:
        entry: the job, as stored.
        event: ``job_start`` or ``job_complete``.
        delivery_id: the delivery's id (also in the ``X-Pushy-Delivery`` header).
        ended_at: when the job finished (``job_complete``), or ``None``.
    """
    job: dict[str, Any] = {
        "id": entry.id,
        "command": entry.spec["command"],
        "requester": entry.spec.get("requester"),
        "created_at": rfc3339(entry.created_at),
        "quorum": entry.job.get("quorum"),
        "node_count": len(entry.nodes),
    }
    if entry.spec.get("rerun_of") is not None:
        job["rerun_of"] = entry.spec["rerun_of"]
    if event == JOB_COMPLETE:
        buckets = entry.buckets()
        job["status"] = entry.status
        job["nodes"] = {status: len(names) for status, names in buckets.items()}
        job["failed_nodes"] = sorted(
            n for status, names in buckets.items() if status in _FAILED for n in names
        )
        if ended_at is not None:
            job["ended_at"] = rfc3339(ended_at)
            job["duration_s"] = round(max(0.0, ended_at - entry.created_at), 3)
    return {"event": event, "delivery": delivery_id, "org": entry.org, "job": job}


def _encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def encode_payload(doc: dict[str, Any], max_bytes: int) -> bytes:
    """``doc`` as the body's bytes; when over ``max_bytes``, the failed nodes' names are
    cut (``failed_nodes_truncated: true``; ``nodes`` still counts every one)."""
    body = _encode(doc)
    names: list[str] = doc["job"].get("failed_nodes") or []
    if len(body) <= max_bytes or not names:
        return body
    low, high = 0, len(names)
    job = dict(doc["job"], failed_nodes_truncated=True)
    best = b""
    while low <= high:  # the most names that fit
        mid = (low + high) // 2
        job["failed_nodes"] = names[:mid]
        candidate = _encode({**doc, "job": job})
        if len(candidate) <= max_bytes:
            best, low = candidate, mid + 1
        else:
            high = mid - 1
    if not best:
        job["failed_nodes"] = []
        best = _encode({**doc, "job": job})
    return best


def signature(secret: str, body: bytes) -> str:
    """The ``X-Pushy-Signature`` header: ``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def next_attempt(
    attempts: int,
    enqueued_at: float,
    now: float,
    *,
    initial: float,
    maximum: float,
    give_up_after: float,
) -> float | None:
    """When to try a delivery again after its ``attempts``-th failed attempt at ``now``.

    Returns:
        The time of the next attempt, or ``None`` when it would be more than
        ``give_up_after`` seconds after ``enqueued_at`` (the delivery ends ``failed``).
    """
    delay = min(maximum, initial * 2.0 ** min(attempts - 1, 64))
    at = now + delay
    if at > enqueued_at + give_up_after:
        return None
    return at
