"""The agent's configuration (``pushy agent``): the whitelist, the variables a job may not
set, and the facts.

The agent's facts are the one exception to the generic loader (``config_base``): its
``[facts]`` table holds a free-form ``[facts.attributes]`` table, and the top-level ``tags``,
``environment`` and ``roles`` belong to them too, so these are taken out and handed to
:func:`~pushy_appliance.facts.parse_facts_config` (``AgentConfig.facts``); their environment
variables are ``PUSHY_FACTS_OHAI``, ``PUSHY_FACTS_OHAI_TIMEOUT``,
``PUSHY_FACTS_REFRESH_INTERVAL``, ``PUSHY_TAGS``, ``PUSHY_ROLES`` (comma-separated) and
``PUSHY_ENVIRONMENT``.

Pure, as :mod:`pushy_appliance.config` is (which re-exports its names).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from .config_base import LOG_LEVELS, LogConfig, coerce, load
from .errors import ConfigError
from .facts import FactsConfig, parse_facts_config

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_PROTECTED_ENV",
    "AgentConfig",
    "AllowEntry",
    "build_agent_config",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


@dataclasses.dataclass(frozen=True, slots=True)
class AllowEntry:
    """One whitelist entry of the agent: exactly one of ``command`` and ``pattern``."""

    command: str | None = None
    pattern: str | None = None
    run: str | None = None
    shell: bool = False


DEFAULT_ALLOW = (AllowEntry(command="chef-client"),)

DEFAULT_PROTECTED_ENV: tuple[str, ...] = (
    # where commands are found
    "PATH",
    "CDPATH",
    # the dynamic loader reads every LD_ variable (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, …);
    # glibc loads conversion modules and locale data from these
    "LD_*",
    "DYLD_*",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "LOCPATH",
    "NLSPATH",
    # shells: startup files, exported functions, options (xtrace expands PS4), word splitting
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_*",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    # interpreters that load code the environment names
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "RUBYOPT",
    "RUBYLIB",
    "GEM_HOME",
    "GEM_PATH",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
)
"""Variables a job's ``env`` may not set unless the agent's config says otherwise: those that
make the loader, a shell or an interpreter run code the whitelisted command does not name. A
name ending in ``*`` is a prefix: ``LD_*`` (every variable of the dynamic loader), ``DYLD_*``
(macOS's), ``BASH_FUNC_*`` (exported bash functions). The interpreters' families are listed
name by name, since they also hold settings jobs use (``PYTHONUNBUFFERED``, ``NODE_ENV``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``pushy agent`` needs."""

    server_url: str | None = None
    """The org URL, ``https://host:10003/organizations/ORG``: ``server_urls`` of one."""
    server_urls: tuple[str, ...] = ()
    """The org URLs of several appliances of one cluster (one org), tried in turn
    (``agent.failover``); give this or ``server_url``, not both."""
    node_name: str | None = None
    """This node's name, also its client name; unset: the host name."""
    client_key: str | None = None
    """PEM private key of the node's client."""
    ca_cert: str | None = None
    """CA file that signs the server's certificate."""
    server_fingerprint: str | None = None
    """``SHA256:HEX`` of the server certificate to pin instead of a CA."""
    state_dir: str | None = None
    """Where the agent keeps its state file; unset: /var/lib/pushy-agent or ~/.local/state."""
    working_dir: str = "/"
    """Directory commands run in when a job gives no ``dir``."""
    protected_env: tuple[str, ...] = DEFAULT_PROTECTED_ENV
    """Variables a job's ``env`` cannot set; a name ending in ``*`` is a prefix."""
    allow: tuple[AllowEntry, ...] = DEFAULT_ALLOW
    """The whitelist."""
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    facts: FactsConfig = dataclasses.field(default_factory=FactsConfig)
    """How facts are collected and the operator's own (``[facts]``, ``tags``,
    ``environment``, ``roles``; see :mod:`pushy_appliance.facts`)."""

    @property
    def servers(self) -> tuple[str, ...]:
        """The org URLs to connect to, in order: ``server_urls``, or ``server_url`` alone;
        empty when neither is set."""
        if self.server_urls:
            return self.server_urls
        return (self.server_url,) if self.server_url else ()


def _check_agent(c: AgentConfig) -> AgentConfig:
    if c.node_name is not None and not _NAME_RE.match(c.node_name):
        raise ConfigError("config", "node_name", f"invalid node name {c.node_name!r}")
    if c.ca_cert and c.server_fingerprint:
        raise ConfigError(
            "config", "ca_cert", "give either ca_cert or server_fingerprint, not both"
        )
    for i, entry in enumerate(c.allow):
        if (entry.command is None) == (entry.pattern is None):
            raise ConfigError("config", f"allow[{i}]", "needs exactly one of command and pattern")
        if entry.pattern is not None:
            try:
                re.compile(entry.pattern)
            except re.error as e:
                raise ConfigError("config", f"allow[{i}].pattern", f"invalid regex: {e}") from None
    if c.log.level not in LOG_LEVELS:
        raise ConfigError("config", "log.level", "must be debug, info, warning or error")
    for i, name in enumerate(c.protected_env):
        stem = name.removesuffix("*")
        if (
            not name
            or "*" in stem
            or "=" in stem
            or not all(ch.isprintable() and ch != " " for ch in stem)
        ):
            raise ConfigError(
                "config",
                f"protected_env[{i}]",
                f"{name[:80]!r} is no variable name (nor a prefix ending in *)",
            )
    return c


_FACTS_TOP = ("tags", "environment", "roles")
"""Top-level agent keys that belong to the facts."""

_FACTS_ENV = {
    "PUSHY_FACTS_OHAI": "ohai",
    "PUSHY_FACTS_OHAI_TIMEOUT": "ohai_timeout",
    "PUSHY_FACTS_REFRESH_INTERVAL": "refresh_interval",
}
_FACTS_TOP_ENV = {"PUSHY_TAGS": "tags", "PUSHY_ROLES": "roles", "PUSHY_ENVIRONMENT": "environment"}


def _agent_facts(
    section: Any, top: dict[str, Any], environ: Mapping[str, str], source: str
) -> FactsConfig:
    """The facts configuration: the file's ``[facts]`` and top-level keys, then ``PUSHY_*``."""
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(source, "facts", f"expected a table, got {type(section).__name__}")
    table = dict(section or {})
    for var, text in environ.items():
        if var in _FACTS_ENV:
            key = _FACTS_ENV[var]
            table[key] = text if key == "ohai" else coerce(text, float, var, "environment", True)
        elif var in _FACTS_TOP_ENV:
            key = _FACTS_TOP_ENV[var]
            if key == "environment":
                top[key] = text
            else:
                top[key] = coerce(text, tuple[str, ...], var, "environment", True)
        elif var.startswith("PUSHY_FACTS_"):
            raise ConfigError(
                "environment", var, "no such key (facts.attributes is set in the file only)"
            )
    return parse_facts_config(
        table,
        tags=top.get("tags"),
        environment=top.get("environment"),
        roles=top.get("roles"),
        source=source,
    )


_SERVER_KEYS = ("server_url", "server_urls")


def _one_server_source(
    file: dict[str, Any] | None,
    source: str,
    env: dict[str, str],
    flags: Mapping[str, Any] | None,
) -> None:
    """Make ``server_url`` and ``server_urls`` one setting: a source may give either, not
    both, and a later source's replaces an earlier's whichever it gives (the earlier one's
    key is dropped from ``file`` and ``env`` in place)."""
    given = {
        source: [k for k in _SERVER_KEYS if file is not None and k in file],
        "environment": [k for k in _SERVER_KEYS if f"PUSHY_{k.upper()}" in env],
        "flags": [k for k in _SERVER_KEYS if flags is not None and flags.get(k) is not None],
    }
    for where, keys in given.items():
        if len(keys) == 2:
            raise ConfigError(where, "server_urls", "give server_url or server_urls, not both")
    later = given["flags"] or given["environment"]
    for key in _SERVER_KEYS:
        if later and key not in later:
            if file is not None:
                file.pop(key, None)
            if given["flags"]:
                env.pop(f"PUSHY_{key.upper()}", None)


def build_agent_config(
    file: Mapping[str, Any] | None = None,
    *,
    source: str = "config",
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Build the agent's configuration; same sources and errors as :func:`build_server_config`.

    The facts (``[facts]``, ``tags``, ``environment``, ``roles`` and their ``PUSHY_*``
    variables) are checked by :func:`~pushy_appliance.facts.parse_facts_config`.
    """
    rest = None if file is None else dict(file)
    section = None if rest is None else rest.pop("facts", None)
    top = {} if rest is None else {k: rest.pop(k) for k in _FACTS_TOP if k in rest}
    env = dict(environ or {})
    facts_env = {
        k: env.pop(k) for k in list(env) if k.startswith("PUSHY_FACTS_") or k in _FACTS_TOP_ENV
    }
    _one_server_source(rest, source, env, flags)
    config = load(AgentConfig, rest, source, env, flags)
    facts = _agent_facts(section, top, facts_env, source if file is not None else "defaults")
    return _check_agent(dataclasses.replace(config, facts=facts))
