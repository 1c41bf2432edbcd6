"""Node facts: the names an agent reports, the operator's additions, the size limit. Pure.

One owner for what a node's facts are, shared by the agent (which collects and sends them)
and the server (which receives, keeps and searches them):

* the default set, in Chef's (ohai's) names and value formats, so Chef users' queries work —
  ``hostname``, ``fqdn``, ``domain``, ``platform``, ``platform_version``,
  ``platform_family``, ``os``, ``os_version``, ``ipaddress``, ``ip6address``, ``macaddress``,
  ``kernel`` (``name``, ``release``, ``machine``), ``cpu`` (``total``), ``memory``
  (``total``, a string like ``"16318480kB"``), ``virtualization`` (``system``, ``role``),
  ``uptime_seconds`` — plus ours, ``pushy_agent_version``. A fact the machine does not have
  (no IPv6 address, no domain) is left out, never sent as nil;
* the operator's additions from the agent config: ``tags``, ``roles``, ``environment`` (sent
  as Chef's ``chef_environment``) and ``[facts.attributes]``, merged at the top level like
  Chef's normal attributes;
* the limit: 64 KiB msgpack-encoded; over it, custom attributes are dropped first (largest
  first), then the operator's tags, roles and environment, with an error to log.

:func:`parse_facts_config` turns the agent config's ``[facts]`` table and top-level
``tags``/``environment``/``roles`` into a frozen :class:`FactsConfig`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import types
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from .errors import ConfigError

__all__ = [
    "DEFAULT_FACTS",
    "MAX_FACTS_BYTES",
    "OHAI_MODES",
    "OPERATOR_FACTS",
    "UNIQUE_FACTS",
    "VOLATILE_FACTS",
    "FactsConfig",
    "Fitted",
    "assemble",
    "encoded_size",
    "facts_changed",
    "fit_to_limit",
    "parse_facts_config",
    "select_ohai",
]

MAX_FACTS_BYTES = 65_536
"""Largest msgpack encoding of one node's facts."""

DEFAULT_FACTS: dict[str, tuple[str, ...]] = {
    "hostname": (),
    "fqdn": (),
    "domain": (),
    "platform": (),
    "platform_version": (),
    "platform_family": (),
    "os": (),
    "os_version": (),
    "ipaddress": (),
    "ip6address": (),
    "macaddress": (),
    "kernel": ("name", "release", "machine"),
    "cpu": ("total",),
    "memory": ("total",),
    "virtualization": ("system", "role"),
    "uptime_seconds": (),
}
"""The default set in ohai's names: a top-level name → the sub-keys taken (``()``: the value)."""

AGENT_VERSION_FACT = "pushy_agent_version"

OPERATOR_FACTS = ("tags", "roles", "chef_environment")
"""The facts the operator's ``tags``, ``roles`` and ``environment`` become."""

VOLATILE_FACTS = frozenset({"uptime_seconds"})
"""Facts that change on every collection; a change of these alone is not worth a frame."""

UNIQUE_FACTS = frozenset({"hostname", "fqdn", "ipaddress", "ip6address", "macaddress"})
"""Facts whose value is one node's own: no two nodes share it, so the server does not intern
it (an entry in the interpreter's table per node, sharing nothing)."""

OHAI_MODES = ("auto", "on", "off")

_RESERVED = frozenset({"name", "status", "availability"})
_TAKEN = frozenset(DEFAULT_FACTS) | {AGENT_VERSION_FACT, *OPERATOR_FACTS} | _RESERVED
_FACTS_KEYS = ("ohai", "ohai_timeout", "refresh_interval", "attributes")


@dataclasses.dataclass(frozen=True, slots=True)
class FactsConfig:
    """How the agent collects facts, and what the operator adds to them."""

    ohai: str = "auto"
    """``auto``: use ohai when it is on PATH, else compute the facts; ``on``: ohai or an
    error; ``off``: always compute them."""
    ohai_timeout: float = 60.0
    """Seconds one ohai run may take."""
    refresh_interval: float = 1800.0
    """Seconds between collections (also on SIGHUP and ``reload``)."""
    tags: tuple[str, ...] = ()
    environment: str | None = None
    roles: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    """``[facts.attributes]``: nested read-only maps, tuples, strings, numbers, booleans."""


def parse_facts_config(
    section: Mapping[str, Any] | None,
    *,
    tags: Any = None,
    environment: Any = None,
    roles: Any = None,
    source: str = "config",
) -> FactsConfig:
    """Check and freeze the agent config's ``[facts]`` table and its top-level additions.

    Args:
        section: the parsed ``[facts]`` table (``None`` when absent).
        tags: the top-level ``tags`` (a list of strings) or ``None``.
        environment: the top-level ``environment`` (a string) or ``None``.
        roles: the top-level ``roles`` (a list of strings) or ``None``.
        source: where the values came from, for error messages (a file path).

    Returns:
        The frozen configuration.

    Raises:
        ConfigError: an unknown key, a wrong type or value, or an attribute that would hide
            a collected fact; naming the key.
    """
    table = dict(section or {})
    unknown = sorted(set(table) - set(_FACTS_KEYS))
    if unknown:
        raise ConfigError(
            source, None, "unknown key(s): " + ", ".join(f"facts.{u}" for u in unknown)
        )
    defaults = FactsConfig()
    ohai = table.get("ohai", defaults.ohai)
    if ohai not in OHAI_MODES:
        raise ConfigError(source, "facts.ohai", f"must be auto, on or off, not {ohai!r}")
    timeout = _positive(
        table.get("ohai_timeout", defaults.ohai_timeout), "facts.ohai_timeout", source
    )
    interval = _positive(
        table.get("refresh_interval", defaults.refresh_interval), "facts.refresh_interval", source
    )
    if environment is not None and (not isinstance(environment, str) or not environment):
        raise ConfigError(source, "environment", "must be a non-empty string")
    attributes = table.get("attributes", {})
    if not isinstance(attributes, Mapping):
        raise ConfigError(source, "facts.attributes", "must be a table")
    for key in attributes:
        if key in _TAKEN:
            raise ConfigError(
                source, f"facts.attributes.{key}", "is the name of a collected fact; choose another"
            )
    return FactsConfig(
        ohai=ohai,
        ohai_timeout=timeout,
        refresh_interval=interval,
        tags=_names(tags, "tags", source),
        environment=environment,
        roles=_names(roles, "roles", source),
        attributes=_frozen(attributes, "facts.attributes", source),
    )


def _positive(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, key, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(source, key, "must be a positive number of seconds")
    return float(value)


def _names(value: Any, key: str, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(source, key, f"expected a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(source, f"{key}[{i}]", "must be a non-empty string")
    return tuple(value)


def _frozen(value: Any, key: str, source: str) -> Any:
    """A read-only copy of an attribute value, checked to be one facts can carry."""
    if isinstance(value, Mapping):
        return types.MappingProxyType(
            {str(k): _frozen(v, f"{key}.{k}", source) for k, v in value.items()}
        )
    if isinstance(value, list | tuple):
        return tuple(_frozen(v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(source, key, "must be a finite number")
    if isinstance(value, datetime.date | datetime.time):
        raise ConfigError(source, key, "dates and times are not supported; quote it as a string")
    if isinstance(value, str | int | float | bool):
        return value
    raise ConfigError(source, key, f"unsupported value of type {type(value).__name__}")


def _plain(value: Any) -> Any:
    """Thaw a frozen attribute value back into dicts and lists (what msgpack encodes)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_SCALARS = (str, int, float)


def select_ohai(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The default set, taken from ohai's JSON output.

    Args:
        doc: ohai's whole output (one JSON object).

    Returns:
        The facts of the default set that ohai reported, values unchanged.
    """
    out: dict[str, Any] = {}
    for name, subkeys in DEFAULT_FACTS.items():
        value = doc.get(name)
        if not subkeys:
            if isinstance(value, _SCALARS) and not isinstance(value, bool):
                out[name] = value
            continue
        if not isinstance(value, Mapping):
            continue
        picked = {
            k: value[k]
            for k in subkeys
            if isinstance(value.get(k), _SCALARS) and not isinstance(value.get(k), bool)
        }
        if picked:
            out[name] = picked
    return out


def assemble(
    system: Mapping[str, Any], config: FactsConfig, *, agent_version: str
) -> dict[str, Any]:
    """A node's facts: the system's (from ohai or computed), ours, then the operator's.

    Args:
        system: the default set (keys of :data:`DEFAULT_FACTS`); others are ignored.
        config: the operator's additions.
        agent_version: this agent's version.
    """
    facts = {k: system[k] for k in DEFAULT_FACTS if system.get(k) is not None}
    facts[AGENT_VERSION_FACT] = agent_version
    if config.tags:
        facts["tags"] = list(config.tags)
    if config.roles:
        facts["roles"] = list(config.roles)
    if config.environment is not None:
        facts["chef_environment"] = config.environment
    for key, value in config.attributes.items():
        facts[key] = _plain(value)
    return facts


def encoded_size(facts: Mapping[str, Any]) -> int:
    """Bytes of the msgpack encoding of ``facts`` (as the node protocol sends them)."""
    return len(msgpack.packb(facts, use_bin_type=True))


@dataclasses.dataclass(frozen=True, slots=True)
class Fitted:
    """Facts cut to the limit.

    Attributes:
        facts: what to send.
        size: their encoded size.
        dropped: the top-level names left out, in the order they were dropped.
        error: a message for the agent's log when something was dropped, else ``None``.
    """

    facts: dict[str, Any]
    size: int
    dropped: tuple[str, ...] = ()
    error: str | None = None


def fit_to_limit(
    facts: Mapping[str, Any], custom: Iterable[str], limit: int = MAX_FACTS_BYTES
) -> Fitted:
    """Cut facts to ``limit`` encoded bytes: custom attributes first (largest first), then the
    operator's tags, roles and environment; the default set always stays.

    Args:
        facts: the assembled facts.
        custom: the names of the custom attributes among them.
        limit: the most bytes allowed.
    """
    out = dict(facts)
    size = encoded_size(out)
    if size <= limit:
        return Fitted(out, size)
    original = size
    candidates = sorted(
        (k for k in custom if k in out), key=lambda k: (-encoded_size({k: out[k]}), k)
    )
    candidates += [k for k in OPERATOR_FACTS if k in out]
    dropped: list[str] = []
    for key in candidates:
        if size <= limit:
            break
        del out[key]
        dropped.append(key)
        size = encoded_size(out)
    error = (
        f"facts are {original} bytes encoded, over the {limit}-byte limit: "
        f"dropped {', '.join(dropped) or 'nothing'}"
    )
    if size > limit:
        error += f"; still {size} bytes"
    return Fitted(out, size, tuple(dropped), error)


def facts_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` is worth a ``facts`` frame after ``old`` (volatile facts aside)."""
    if old is None:
        return True
    keys = (set(old) | set(new)) - VOLATILE_FACTS
    return any(old.get(k) != new.get(k) for k in keys)
