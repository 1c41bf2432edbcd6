"""``pushy cluster export`` and ``pushy cluster join``: give a new appliance's data directory
the keys and CA of a cluster (``docs/SCALE-OUT.md`` §10; the files are
:data:`~pushy_appliance.cluster_secrets.SECRET_FILES`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import fsutil
from ..cluster_secrets import (
    SECRET_FILES,
    check_secrets,
    conflicts,
    decode_bundle,
    encode_bundle,
    issued_by,
)
from ..config_files import resolve_data_dir
from ..errors import ConfigError
from ._common import EXIT_OK

__all__ = ["add_parser", "cmd_export", "cmd_join"]

_PUBLIC = {"tls/ca.pem"}
"""Shared files that are not secret (mode 0644; the rest 0600)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pushy cluster export`` and ``pushy cluster join``.

    Args:
        sub: the ``pushy`` subcommand parsers.
    """
    cluster = sub.add_parser(
        "cluster",
        help="share a cluster's keys and CA between appliances' data directories",
        description="Appliances that serve one fleet (the servers of an agent's "
        "server_urls; docs/SCALE-OUT.md) share the superuser's and the admin's keys and the "
        "TLS CA: keys/pivotal.pem, keys/admin.pem, tls/ca.pem, tls/ca.key. Each keeps its "
        "own server certificate, issued from the shared CA at its first start, so agents "
        "trust every appliance with one ca_cert.",
    ).add_subparsers(dest="sub", metavar="ACTION")
    cluster.required = True
    p = cluster.add_parser(
        "export",
        help="write the data directory's shared keys and CA to a bundle file",
        description="Write the shared keys and CA of a data directory that pushy serve "
        "started on to a new bundle file (JSON, mode 0600: it holds private keys in clear; "
        "move it as you would the keys, then delete it). Exits 2 when a file is missing "
        "or unusable, naming it.",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="data directory (default: PUSHY_DATA_DIR or the default)"
    )
    p.add_argument("--out", metavar="FILE", required=True, help="the bundle to write (new file)")
    p.set_defaults(handler=cmd_export)
    p = cluster.add_parser(
        "join",
        help="give a new data directory the cluster's keys and CA (before its first start)",
        description="Copy the shared keys and CA from SOURCE into the data directory, before "
        "pushy serve first starts on it; that start then issues the appliance's own server "
        "certificate from the shared CA. SOURCE is the data directory of an appliance of "
        "the cluster, or a bundle from pushy cluster export. Running it again is harmless. "
        "Exits 2, changing nothing, when SOURCE lacks a file (all missing ones are named) or "
        "the data directory already has other keys or a CA of its own, or a server "
        "certificate the shared CA did not issue.",
    )
    p.add_argument("source", metavar="SOURCE", help="a data directory or a bundle file")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the data directory to join (default: PUSHY_DATA_DIR or the default)",
    )
    p.set_defaults(handler=cmd_join)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot read: {e.strerror or e}") from None


def _present(data_dir: Path) -> dict[str, bytes]:
    """The shared files ``data_dir`` has."""
    return {n: _read(data_dir / n) for n in SECRET_FILES if (data_dir / n).is_file()}


def read_secrets(source: Path) -> dict[str, bytes]:
    """The shared files of a data directory or a bundle, checked.

    Raises:
        ConfigError: ``source`` is neither, or lacks a file (every missing one named), or a
            file is unusable.
    """
    if source.is_dir():
        secrets = _present(source)
        check_secrets(secrets, str(source))
        return secrets
    if source.is_file():
        return decode_bundle(_read(source), str(source))
    raise ConfigError(str(source), None, "no such data directory or bundle file")


def cmd_export(args: argparse.Namespace) -> int:
    """Write the bundle.

    Raises:
        ConfigError: the data directory lacks a file or has an unusable one, or ``--out``
            exists or cannot be written.
    """
    data_dir = resolve_data_dir(args.data_dir)
    if not data_dir.is_dir():
        raise ConfigError(str(data_dir), None, "no such data directory")
    bundle = encode_bundle(read_secrets(data_dir))
    out = Path(args.out).expanduser()
    if out.exists():
        raise ConfigError(str(out), None, "already exists; give a new file")
    try:
        fsutil.write_durably(out, bundle, mode=0o600)
    except OSError as e:
        raise ConfigError(str(out), None, f"cannot write: {e.strerror or e}") from None
    print(f"wrote the keys and CA of {data_dir} to {out} (it holds private keys: mode 0600)")
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    """Copy the shared files into the data directory.

    Raises:
        ConfigError: as the command's description says; nothing is written then. (A write
            that fails half-way is reported too; running the command again completes it.)
    """
    source = Path(args.source).expanduser()
    target = resolve_data_dir(args.data_dir)
    if target.exists() and source.exists() and source.resolve() == target.resolve():
        raise ConfigError(str(target), None, "is SOURCE itself")
    shared = read_secrets(source)
    existing = _present(target)
    clash = conflicts(shared, existing)
    if clash:
        raise ConfigError(
            str(target),
            None,
            f"already has its own {', '.join(clash)}; join a data directory before pushy "
            "serve first starts on it (an empty or new one)",
        )
    if (target / "bootstrap.done").exists() and existing != shared:
        missing = ", ".join(n for n in SECRET_FILES if n not in existing)
        raise ConfigError(
            str(target), None, f"was started on its own (it lacks {missing}); use a new one"
        )
    for name in ("tls/server.pem",):
        cert = target / name
        if cert.is_file() and not issued_by(_read(cert), shared["tls/ca.pem"]):
            raise ConfigError(
                str(target),
                name,
                "was not issued by the cluster's CA; remove tls/server.pem and "
                "tls/server.key and the next pushy serve issues one from the shared CA",
            )
    written = [n for n in SECRET_FILES if n not in existing]
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in written:
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fsutil.write_durably(path, shared[name], mode=0o644 if name in _PUBLIC else 0o600)
    except OSError as e:
        raise ConfigError(
            str(e.filename or target), None, f"cannot write: {e.strerror or e}"
        ) from None
    if written:
        print(f"{target} now shares the keys and CA of {source} (wrote {', '.join(written)})")
    else:
        print(f"{target} already shares the keys and CA of {source}")
    return EXIT_OK
