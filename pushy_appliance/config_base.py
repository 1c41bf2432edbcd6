"""What the server's and the agent's configuration share: the loader that builds a frozen
dataclass from its three sources (a TOML file, ``PUSHY_*`` environment variables, flags; the
rules are in :mod:`pushy_appliance.config`'s docstring), ``HOST:PORT`` parsing, and the
``[log]`` section both have.

Pure, as :mod:`pushy_appliance.config` is: it reads no file, environment or clock itself.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["LOG_LEVELS", "LogConfig", "coerce", "load", "parse_host_port", "parse_toml"]

LOG_LEVELS = ("debug", "info", "warning", "error")
"""The values of ``log.level``."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    """One of debug, info, warning, error."""
    format: str = "text"
    """``text`` or ``json`` (one object per line)."""


T = TypeVar("T")


def parse_host_port(value: str, *, key: str = "listen", source: str = "config") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too) into its parts.

    Raises:
        ConfigError: when the value is not of that form or the port is out of range.
    """
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s]+):(\d+)", value.strip())
    if not m:
        raise ConfigError(source, key, f"expected HOST:PORT, got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ConfigError(source, key, f"port {port} out of range 0..65535")
    return host, port


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, source: str, from_text: bool) -> Any:
    """Check (or, for environment text, convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_text and value == ""):
            return None
        return coerce(value, args[0], key, source, from_text)
    if tp is bool:
        if from_text and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(source, key, f"expected a boolean, got {value!r}")
        if isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected a boolean, got {type(value).__name__}")
    if tp is int:
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(source, key, f"expected an integer, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected an integer, got {type(value).__name__}")
    if tp is float:
        if from_text and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ConfigError(source, key, f"expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, key, f"expected a number, got {type(value).__name__}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, key, f"expected a string, got {type(value).__name__}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(source, key, f"expected a list, got {type(value).__name__}")
        return tuple(
            coerce(v, item_tp, f"{key}[{i}]", source, from_text) for i, v in enumerate(value)
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, f"expected a table, got {type(value).__name__}")
        return _build(typing.cast(type[Any], tp), value, source, prefix=f"{key}.")
    raise ConfigError(source, key, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], data: Mapping[str, Any], source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(prefix + u for u in unknown)
        raise ConfigError(source, None, f"unknown key(s): {names}")
    kwargs = {
        name: coerce(value, hints[name], prefix + name, source, from_text=False)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_toml(data: bytes, source: str) -> dict[str, Any]:
    """Parse a configuration file's bytes (UTF-8 TOML).

    Args:
        data: the file's content.
        source: what errors call the file (its path).

    Raises:
        ConfigError: the bytes are not valid TOML.
    """
    try:
        return tomllib.loads(data.decode())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, None, f"invalid TOML: {e}") from None


def _is_table_list(tp: Any) -> bool:
    """A tuple of tables (``[[allow]]``): only settable from the file."""
    if typing.get_origin(tp) is not tuple:
        return False
    return dataclasses.is_dataclass(typing.get_args(tp)[0])


def _env_overrides(cls: type[Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Map ``PUSHY_SECTION_KEY`` variables onto the dataclass ``cls``'s keys (text values)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    sections: dict[str, tuple[str, type[Any]]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sections[f"PUSHY_{f.name.upper()}_"] = (f.name, tp)  # type: ignore[assignment]
        elif not _is_table_list(tp):
            var = f"PUSHY_{f.name.upper()}"
            if var in environ:
                out[f.name] = coerce(environ[var], tp, var, "environment", from_text=True)
    for var, text in environ.items():
        for prefix, (section, sub_cls) in sections.items():
            if not var.startswith(prefix):
                continue
            sub_hints = typing.get_type_hints(sub_cls)
            key = var[len(prefix) :].lower()
            if key not in sub_hints:
                raise ConfigError("environment", var, f"no key {section}.{key}")
            out.setdefault(section, {})[key] = coerce(
                text, sub_hints[key], var, "environment", from_text=True
            )
    return out


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def load(
    cls: type[T],
    file: Mapping[str, Any] | None,
    source: str,
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None,
) -> T:
    """Build ``cls`` from the parsed file, then ``environ``'s ``PUSHY_*`` variables, then the
    dotted ``flags`` (``None`` values ignored), later ones winning.

    Raises:
        ConfigError: naming the source and key of the first problem found.
    """
    data: dict[str, Any] = {}
    if file is not None:
        data = dict(file)
        _build(cls, data, source)  # type- and key-check the file on its own
    env = _env_overrides(cls, environ)
    # Environment values are already typed; merge them as plain data.
    data = _merge(data, {k: _to_plain(v) for k, v in env.items()})
    flag_tree: dict[str, Any] = {}
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        node = flag_tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    data = _merge(data, flag_tree)
    config = _build(cls, data, "flags" if flags else (source if file is not None else "defaults"))
    return config
