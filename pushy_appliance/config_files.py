"""Configuration from the machine: the TOML file, and where the data directory is by default.

``config`` parses and checks; this module does the reading it leaves out (layer 2): the file
named by ``--config``, and the environment, user and home directory that decide the default
data directory. Every other source (``PUSHY_*`` variables, flags) is handed in by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import AgentConfig, ServerConfig, build_agent_config, build_server_config, parse_toml
from .errors import ConfigError

__all__ = [
    "load_agent_config",
    "load_server_config",
    "read_toml",
    "resolve_data_dir",
    "sandbox_data_dir",
]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML configuration file.

    Raises:
        ConfigError: the file is missing, unreadable or not valid TOML (the source is
            ``path``).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except OSError as e:
        raise ConfigError(str(path), None, e.strerror or str(e)) from None
    return parse_toml(data, str(path))


def load_server_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Load the server's configuration.

    Args:
        path: TOML file, or ``None`` for none.
        environ: the environment to read ``PUSHY_*`` variables from (``{}`` for none).
        flags: dotted keys from the command line; ``None`` values are ignored.

    Raises:
        ConfigError: naming the source and key of the first problem found.
    """
    file = None if path is None else read_toml(path)
    return build_server_config(file, source=str(path), environ=environ, flags=flags)


def load_agent_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Load the agent's configuration; same sources and errors as :func:`load_server_config`."""
    file = None if path is None else read_toml(path)
    return build_agent_config(file, source=str(path), environ=environ, flags=flags)


def resolve_data_dir(configured: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The data directory: configured, else ``PUSHY_DATA_DIR``, else /var/lib/pushy as root,
    else ``$XDG_DATA_HOME/pushy`` (``~/.local/share/pushy``)."""
    env = os.environ if environ is None else environ
    if configured:
        return Path(configured).expanduser()
    if env.get("PUSHY_DATA_DIR"):
        return Path(env["PUSHY_DATA_DIR"]).expanduser()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/pushy")
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pushy"


def sandbox_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The default data directory of ``pushy sandbox``: ``$XDG_CACHE_HOME/pushy/sandbox``
    (``~/.cache/pushy/sandbox``), for root too. The CLI falls back on its ``credentials``."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pushy" / "sandbox"
