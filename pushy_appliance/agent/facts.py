"""The agent's fact collector: ohai when it is there, else the system's own files.

:func:`collect_facts` runs Chef's ``ohai`` (mode ``auto``/``on``; one run, bounded by
``facts.ohai_timeout``, killed when late) and takes the default set from its JSON, or computes
the same names and formats itself (mode ``off``, or ``auto`` without a working ohai) from
``/etc/os-release``, ``/proc``, ``/sys`` and the resolver. It then adds the operator's facts
and cuts the result to the 64 KiB limit (:func:`pushy_appliance.facts.fit_to_limit`), logging
an error when it had to drop anything. The shaping is pure (:mod:`pushy_appliance.facts`,
:mod:`.facts_parse`); this module only runs, reads and resolves.

Cancellation: a cancelled collection kills a running ohai and abandons a pending name
resolution; nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import AgentError
from ..facts import FactsConfig, assemble, fit_to_limit, select_ohai
from . import facts_parse as parse

__all__ = ["RESOLVE_TIMEOUT", "CollectedFacts", "collect_facts", "run_ohai", "system_facts"]

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT = 5.0
"""Seconds the fallback waits for the resolver to canonicalize the host name (``fqdn``)."""

_OS_NAMES = {"linux": "linux", "darwin": "darwin", "win32": "windows", "cygwin": "windows"}


@dataclasses.dataclass(frozen=True, slots=True)
class CollectedFacts:
    """One collection.

    Attributes:
        facts: what to send in ``hello`` / ``facts`` (within the size limit).
        source: ``ohai`` or ``fallback``.
        size: the msgpack-encoded size of ``facts``.
        problems: what went wrong but did not stop the collection (ohai failing in ``auto``
            mode, facts cut to the limit), each also logged.
    """

    facts: dict[str, Any]
    source: str
    size: int
    problems: tuple[str, ...] = ()


async def run_ohai(path: str) -> dict[str, Any]:
    """Run ohai once and return its JSON. Bound it at the call site (``trio.fail_after``).

    Args:
        path: the ohai executable.

    Raises:
        AgentError: ohai could not start, failed or printed no JSON object.

    Cancellation: ohai is killed (``trio.run_process``: SIGTERM, then SIGKILL).
    """
    try:
        done = await trio.run_process(
            [path, "-l", "fatal"], capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as e:
        raise AgentError(f"ohai ({path}) could not start: {e.strerror or e}") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else "no message"
        raise AgentError(f"ohai ({path}) exited with status {done.returncode}: {why[:300]}")
    try:
        doc = json.loads(done.stdout)
    except ValueError as e:
        raise AgentError(f"ohai ({path}) printed no JSON: {e}") from None
    if not isinstance(doc, dict):
        raise AgentError(f"ohai ({path}) printed JSON that is not an object")
    return doc


async def collect_facts(
    config: FactsConfig,
    *,
    agent_version: str,
    node_name: str,
    which: Callable[[str], str | None] = shutil.which,
    root: Path = Path("/"),
) -> CollectedFacts:
    """Collect this node's facts.

    Args:
        config: the ``[facts]`` configuration and the operator's additions.
        agent_version: this agent's version (``pushy_agent_version``).
        node_name: for the log lines.
        which: finds executables on PATH (ohai, and docker/nova/lxc for virtualization).
        root: where the system's files are (tests point it at a copy).

    Returns:
        The facts, where they came from and what went wrong on the way.

    Raises:
        AgentError: ``facts.ohai`` is ``on`` and ohai is missing or failed.
    """
    problems: list[str] = []
    system: dict[str, Any] | None = None
    source = "fallback"
    if config.ohai != "off":
        path = which("ohai")
        if path is None:
            if config.ohai == "on":
                raise AgentError('facts.ohai is "on" but ohai is not on PATH')
            log.debug("node %s: ohai not on PATH, computing facts", node_name)
        else:
            try:
                try:
                    with trio.fail_after(config.ohai_timeout):
                        system = select_ohai(await run_ohai(path))
                except trio.TooSlowError:
                    raise AgentError(
                        f"ohai ({path}) did not finish within {config.ohai_timeout:g} s"
                    ) from None
                source = "ohai"
            except AgentError as e:
                if config.ohai == "on":
                    raise AgentError(f'facts.ohai is "on" but {e}') from None
                problems.append(f"{e}; computing facts without it")
                log.warning("node %s: %s", node_name, problems[-1])
    if system is None:
        system = await system_facts(which=which, root=root)
    fitted = fit_to_limit(
        assemble(system, config, agent_version=agent_version), custom=config.attributes
    )
    if fitted.error is not None:
        problems.append(fitted.error)
        log.error("node %s: %s", node_name, fitted.error)
    return CollectedFacts(fitted.facts, source, fitted.size, tuple(problems))


async def system_facts(
    *, which: Callable[[str], str | None] = shutil.which, root: Path = Path("/")
) -> dict[str, Any]:
    """The default set computed without ohai, in ohai's names and formats.

    Args:
        which: finds executables on PATH (docker, nova, lxc: virtualization hints).
        root: where the system's files are.
    """
    machinename = socket.gethostname()
    canonical: str | None = None
    with trio.move_on_after(RESOLVE_TIMEOUT):
        try:
            info = await trio.socket.getaddrinfo(machinename, None, flags=socket.AI_CANONNAME)
            canonical = (info[0][3] or None) if info else None
        except OSError:
            canonical = None
    facts = await trio.to_thread.run_sync(_read_system, which, root, abandon_on_cancel=True)
    facts.update(parse.hostname_facts(machinename, canonical))
    return facts


def _read(root: Path, path: str) -> str | None:
    try:
        return (root / path.lstrip("/")).read_text(errors="replace")
    except OSError:
        return None


def _exists(root: Path, path: str) -> bool:
    return (root / path.lstrip("/")).exists()


def _read_system(which: Callable[[str], str | None], root: Path) -> dict[str, Any]:
    """Read the files (in a worker thread) and shape them with :mod:`.facts_parse`."""
    uname = os.uname()
    facts: dict[str, Any] = {
        "os": _OS_NAMES.get(sys.platform, sys.platform),
        "os_version": uname.release,
        "kernel": {"name": uname.sysname, "release": uname.release, "machine": uname.machine},
    }
    os_release = _read(root, "/etc/os-release")
    if os_release is not None:
        facts.update(
            parse.platform_facts(
                parse.parse_os_release(os_release),
                kernel_release=uname.release,
                debian_version=_read(root, "/etc/debian_version"),
                redhat_release=_read(root, "/etc/redhat-release"),
            )
        )
    else:
        facts.update(platform=platform.system().lower(), platform_version=uname.release)
    cpuinfo = _read(root, "/proc/cpuinfo")
    cpus = parse.cpu_total(cpuinfo or "") or os.cpu_count()
    if cpus:
        facts["cpu"] = {"total": cpus}
    memory = parse.memory_total(_read(root, "/proc/meminfo") or "")
    if memory:
        facts["memory"] = {"total": memory}
    uptime = parse.uptime_seconds(_read(root, "/proc/uptime") or "")
    if uptime is not None:
        facts["uptime_seconds"] = uptime
    facts.update(_network(root))
    virt = parse.virtualization(_virt_probes(which, root, cpuinfo))
    if virt:
        facts["virtualization"] = virt
    return facts


def _network(root: Path) -> dict[str, str]:
    route = _read(root, "/proc/net/route") or ""
    v4 = parse.pick_address(
        parse.ipv4_addresses(_read(root, "/proc/net/fib_trie") or "", route),
        parse.default_route_v4(route),
    )
    v6 = parse.pick_address(
        parse.ipv6_addresses(_read(root, "/proc/net/if_inet6") or ""),
        parse.default_route_v6(_read(root, "/proc/net/ipv6_route") or ""),
    )
    out: dict[str, str] = {}
    for picked, name in ((v4, "ipaddress"), (v6, "ip6address")):
        if picked is None:
            continue
        out[name] = picked.address
        if "macaddress" not in out and picked.iface:
            flags = _read(root, f"/sys/class/net/{picked.iface}/flags")
            try:
                flag_bits = int(flags.strip(), 16) if flags else None
            except ValueError:
                flag_bits = None
            mac = parse.macaddress(_read(root, f"/sys/class/net/{picked.iface}/address"), flag_bits)
            if mac:
                out["macaddress"] = mac
    return out


def _virt_probes(
    which: Callable[[str], str | None], root: Path, cpuinfo: str | None
) -> parse.VirtProbes:
    return parse.VirtProbes(
        docker_on_path=which("docker") is not None,
        nova_on_path=which("nova") is not None,
        lxc_on_path=which("lxc-version") is not None or which("lxc-start") is not None,
        proc_xen=_exists(root, "/proc/xen"),
        xen_capabilities=_read(root, "/proc/xen/capabilities"),
        proc_modules=_read(root, "/proc/modules"),
        cpuinfo=cpuinfo,
        sys_kvm=_exists(root, "/sys/devices/virtual/misc/kvm"),
        dmi_vendor=_read(root, "/sys/class/dmi/id/sys_vendor"),
        dmi_product=_read(root, "/sys/class/dmi/id/product_name"),
        proc_bc_0=_exists(root, "/proc/bc/0"),
        proc_vz=_exists(root, "/proc/vz"),
        hyperv_kvp=_exists(root, "/var/lib/hyperv/.kvp_pool_3"),
        self_status=_read(root, "/proc/self/status"),
        self_cgroup=_read(root, "/proc/self/cgroup"),
        init_environ=_read(root, "/proc/1/environ"),
        dockerenv=_exists(root, "/.dockerenv") or _exists(root, "/.dockerinit"),
        lxd_sock=_exists(root, "/dev/lxd/sock"),
        lxd_host=_exists(root, "/var/lib/lxd/devlxd")
        or _exists(root, "/var/snap/lxd/common/lxd/devlxd"),
    )
