"""The default fact set computed without ohai, from the text of the system's files. Pure.

Each function reads the text of one file (or a few) and returns the value in ohai's name and
format, following ohai 16's Linux plugins (``platform``, ``hostname``, ``kernel``, ``cpu``,
``memory``, ``uptime``, ``network``, ``virtualization``), so a node reports the same facts
with ohai as without. :mod:`.facts` reads the files and calls these.

Where ohai runs a command we read what the command reads: ``/proc/net/route``,
``/proc/net/fib_trie``, ``/proc/net/if_inet6`` and ``/proc/net/ipv6_route`` instead of
``ip addr`` / ``ip route``; ``/sys/class/dmi/id`` instead of ``dmidecode``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from collections.abc import Mapping

__all__ = [
    "Address",
    "VirtProbes",
    "cpu_total",
    "default_route_v4",
    "default_route_v6",
    "hostname_facts",
    "ipv4_addresses",
    "ipv6_addresses",
    "macaddress",
    "memory_total",
    "parse_os_release",
    "pick_address",
    "platform_facts",
    "platform_family",
    "uptime_seconds",
    "virtualization",
]

# ohai's remap of os-release IDs to its platform names.
_PLATFORM_REMAP = {
    "alinux": "alibabalinux",
    "amzn": "amazon",
    "archarm": "arch",
    "cumulus-linux": "cumulus",
    "ol": "oracle",
    "opensuse-leap": "opensuseleap",
    "rhel": "redhat",
    "sles_sap": "suse",
    "sles": "suse",
    "xenenterprise": "xenserver",
}

# ohai's platform_family, first match wins (substrings of the platform name).
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("debian", ("debian", "ubuntu", "linuxmint", "raspbian", "cumulus", "kali", "pop")),
    (
        "rhel",
        (
            "oracle", "centos", "redhat", "almalinux", "scientific", "enterpriseenterprise",
            "xcp", "xenserver", "cloudlinux", "ibm_powerkvm", "parallels", "nexus_centos",
            "clearos", "bigip", "alibabalinux", "sangoma",
        ),
    ),
    ("amazon", ("amazon",)),
    ("suse", ("suse", "sles", "opensuse", "opensuseleap", "sled")),
    ("fedora", ("fedora", "pidora", "arista_eos")),
    ("wrlinux", ("nexus", "ios_xr")),
    ("gentoo", ("gentoo",)),
    ("slackware", ("slackware",)),
    ("arch", ("arch", "manjaro", "antergos")),
    ("exherbo", ("exherbo",)),
    ("alpine", ("alpine",)),
    ("clearlinux", ("clearlinux",)),
    ("mandriva", ("mangeia",)),
)  # fmt: skip


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` (shell assignments, values maybe quoted) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        out[key.strip()] = " ".join(words)
    return out


def platform_family(platform: str) -> str | None:
    """ohai's ``platform_family`` of a platform name."""
    for family, patterns in _FAMILIES:
        if any(p in platform for p in patterns):
            return family
    return None


def platform_facts(
    os_release: Mapping[str, str],
    *,
    kernel_release: str,
    debian_version: str | None = None,
    redhat_release: str | None = None,
) -> dict[str, str]:
    """``platform``, ``platform_version`` and ``platform_family`` the way ohai reads them.

    Args:
        os_release: ``/etc/os-release`` parsed.
        kernel_release: ``uname -r``, the version of rolling distributions.
        debian_version: ``/etc/debian_version`` (Debian testing has no ``VERSION_ID``).
        redhat_release: ``/etc/redhat-release`` (CentOS puts only the major in os-release).
    """
    os_id = os_release.get("ID", "")
    if not os_id:
        return {}
    platform = _PLATFORM_REMAP.get(os_id, os_id)
    version: str | None = os_release.get("VERSION_ID")
    if os_id == "centos" and redhat_release:
        m = re.search(r"(release)? ([\d.]+)", redhat_release)
        version = m.group(2) if m else version
    elif os_id == "debian" and not version and debian_version:
        version = debian_version.strip()
    out = {"platform": platform, "platform_version": version or kernel_release}
    family = platform_family(platform)
    if family is not None:
        out["platform_family"] = family
    return out


def hostname_facts(machinename: str, canonical: str | None) -> dict[str, str]:
    """``hostname`` (up to the first dot), ``fqdn`` (the resolver's canonical name, as
    ``hostname --fqdn``) and ``domain`` (the fqdn after its first dot)."""
    out = {"hostname": machinename.split(".", 1)[0]} if machinename else {}
    if canonical:
        out["fqdn"] = canonical
        host, dot, domain = canonical.partition(".")
        if dot and host and domain:
            out["domain"] = domain
    return out


def cpu_total(cpuinfo: str) -> int | None:
    """``cpu.total``: the processors ``/proc/cpuinfo`` lists."""
    count = len(re.findall(r"^processor\s*(?::\s|\d+:)", cpuinfo, re.MULTILINE))
    return count or None


def memory_total(meminfo: str) -> str | None:
    """``memory.total`` as ohai spells it: ``MemTotal`` with its unit, ``"16318480kB"``."""
    m = re.search(r"^MemTotal:\s+(\d+) (\S+)", meminfo, re.MULTILINE)
    return f"{m.group(1)}{m.group(2)}" if m else None


def uptime_seconds(uptime: str) -> int | None:
    """``uptime_seconds``: the first number of ``/proc/uptime``, whole seconds."""
    try:
        return int(float(uptime.split()[0]))
    except (IndexError, ValueError):
        return None


# --- network --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """One interface address: ``scope`` as ``ip addr`` names it (global, link, host, site)."""

    iface: str | None
    address: str
    prefixlen: int
    scope: str


_SCOPE_ORDER = ("global", "site", "link", "host")
_RTF_UP = 0x1
_RTF_REJECT = 0x200


def _hex_v4(word: str) -> str:
    """A little-endian hex address of ``/proc/net/route`` as dotted quad."""
    return str(ipaddress.IPv4Address(int(word, 16).to_bytes(4, "little")))


def default_route_v4(route: str) -> tuple[str, str] | None:
    """The IPv4 default route of lowest metric in ``/proc/net/route``: (interface, gateway)."""
    best: tuple[int, str, str] | None = None
    for line in route.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest, gateway, flags, metric, mask = int(f[1], 16), f[2], int(f[3], 16), int(f[6]), f[7]
        except ValueError:
            continue
        if dest or int(mask, 16) or not flags & _RTF_UP:
            continue
        if best is None or metric < best[0]:
            best = (metric, f[0], _hex_v4(gateway))
    return None if best is None else (best[1], best[2])


def ipv4_addresses(fib_trie: str, route: str) -> list[Address]:
    """The host's IPv4 addresses: the ``/32 host LOCAL`` entries of ``/proc/net/fib_trie``,
    each on the interface whose connected route (``/proc/net/route``) holds it."""
    local: list[str] = []
    last: str | None = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif last is not None and text == "/32 host LOCAL" and last not in local:
            local.append(last)
    connected: list[tuple[ipaddress.IPv4Network, str]] = []
    for line in route.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            gateway, mask = int(f[2], 16), f[7]
            net = ipaddress.IPv4Network(f"{_hex_v4(f[1])}/{_hex_v4(mask)}", strict=False)
        except ValueError:
            continue
        if not gateway and net.prefixlen:
            connected.append((net, f[0]))
    out = []
    for text in local:
        addr = ipaddress.IPv4Address(text)
        on = [(net.prefixlen, iface) for net, iface in connected if addr in net]
        prefix, iface = max(on) if on else (8 if addr.is_loopback else 32, None)
        if iface is None and addr.is_loopback:
            iface = "lo"
        scope = "host" if addr.is_loopback else "link" if addr.is_link_local else "global"
        out.append(Address(iface, text, prefix, scope))
    return out


_V6_SCOPES = {0x00: "global", 0x10: "host", 0x20: "link", 0x40: "site"}


def _hex_v6(word: str) -> str:
    return str(ipaddress.IPv6Address(int(word, 16)))


def ipv6_addresses(if_inet6: str) -> list[Address]:
    """The host's IPv6 addresses from ``/proc/net/if_inet6``, compressed like ohai's."""
    out = []
    for line in if_inet6.splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        try:
            address, prefix, scope = _hex_v6(f[0]), int(f[2], 16), int(f[3], 16)
        except ValueError:
            continue
        out.append(Address(f[5], address, prefix, _V6_SCOPES.get(scope & 0xF0, "global")))
    return out


def default_route_v6(ipv6_route: str) -> tuple[str, str] | None:
    """The IPv6 default route of lowest metric in ``/proc/net/ipv6_route`` (not the kernel's
    unreachable one): (interface, next hop, ``::`` when on-link)."""
    best: tuple[int, str, str] | None = None
    for line in ipv6_route.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            dest, plen, hop, metric, flags = (
                int(f[0], 16),
                int(f[1], 16),
                f[4],
                int(f[5], 16),
                int(f[8], 16),
            )
        except ValueError:
            continue
        if dest or plen or not flags & _RTF_UP or flags & _RTF_REJECT:
            continue
        if best is None or metric < best[0]:
            best = (metric, f[9], _hex_v6(hop))
    return None if best is None else (best[1], best[2])


def pick_address(addresses: list[Address], default: tuple[str, str] | None) -> Address | None:
    """ohai's choice of ``ipaddress``/``ip6address``: addresses sorted by scope, longest
    prefix, lowest address; on the default route's interface the one whose network holds the
    gateway (or the first, for an on-link gateway), else the first of all."""

    def key(a: Address) -> tuple[int, int, int]:
        scope = _SCOPE_ORDER.index(a.scope) if a.scope in _SCOPE_ORDER else len(_SCOPE_ORDER)
        return scope, -a.prefixlen, int(ipaddress.ip_address(a.address))

    ordered = sorted(addresses, key=key)
    if default is None:
        return ordered[0] if ordered else None
    iface, gateway = default
    on_iface = [a for a in ordered if a.iface == iface]
    if not on_iface:
        return None
    if gateway in ("0.0.0.0", "::") or gateway.startswith("fe80:"):
        return on_iface[0]
    gw = ipaddress.ip_address(gateway)
    for a in on_iface:
        if gw in ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False):
            return a
    return on_iface[0]


_IFF_NOARP = 0x80


def macaddress(address: str | None, flags: int | None) -> str | None:
    """An interface's MAC as ohai reports it (upper case); none for ``00:…`` or NOARP."""
    if not address:
        return None
    mac = address.strip().upper()
    if not re.fullmatch(r"[0-9A-F]{2}(:[0-9A-F]{2})+", mac) or not mac.strip("0:"):
        return None
    if flags is not None and flags & _IFF_NOARP:
        return None
    return mac


# --- virtualization -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class VirtProbes:
    """What ohai's Linux virtualization plugin looks at (text ``None``: file absent)."""

    docker_on_path: bool = False
    nova_on_path: bool = False
    lxc_on_path: bool = False
    proc_xen: bool = False
    xen_capabilities: str | None = None
    proc_modules: str | None = None
    cpuinfo: str | None = None
    sys_kvm: bool = False
    dmi_vendor: str | None = None
    dmi_product: str | None = None
    proc_bc_0: bool = False
    proc_vz: bool = False
    hyperv_kvp: bool = False
    self_status: str | None = None
    self_cgroup: str | None = None
    init_environ: str | None = None
    dockerenv: bool = False
    lxd_sock: bool = False
    lxd_host: bool = False


def _guest_from_dmi(vendor: str, product: str) -> str | None:
    for needle, guest in (
        ("OpenStack", "openstack"), ("Xen", "xen"), ("VMware", "vmware"),
        ("Amazon EC2", "amazonec2"), ("QEMU", "kvm"), ("Veertu", "veertu"),
        ("Parallels", "parallels"),
    ):  # fmt: skip
        if needle in vendor:
            return guest
    if "Microsoft" in vendor:
        return "hyperv" if "Virtual Machine" in product else None
    for needle, guest in (
        ("VirtualBox", "vbox"), ("OpenStack", "openstack"), ("KVM", "kvm"), ("RHEV", "kvm"),
        ("BHYVE", "bhyve"),
    ):  # fmt: skip
        if needle in product:
            return guest
    return None


def virtualization(p: VirtProbes) -> dict[str, str]:
    """``virtualization.system`` and ``.role``: ohai's checks in ohai's order, the last
    that fires wins."""
    found: list[tuple[str, str]] = []
    if p.docker_on_path:
        found.append(("docker", "host"))
    if p.proc_xen:
        control = p.xen_capabilities is not None and "control_d" in p.xen_capabilities.lower()
        found.append(("xen", "host" if control else "guest"))
    if p.proc_modules is not None:
        if re.search(r"^vboxdrv", p.proc_modules, re.MULTILINE):
            found.append(("vbox", "host"))
        elif re.search(r"^vboxguest", p.proc_modules, re.MULTILINE):
            found.append(("vbox", "guest"))
    if p.nova_on_path:
        found.append(("openstack", "host"))
    cpuinfo = p.cpuinfo or ""
    if re.search(r"QEMU Virtual CPU|Common KVM processor|Common 32-bit KVM processor", cpuinfo):
        found.append(("kvm", "guest"))
    if p.sys_kvm:
        found.append(("kvm", "guest" if "hypervisor" in cpuinfo else "host"))
    guest = _guest_from_dmi(p.dmi_vendor or "", p.dmi_product or "")
    if guest is not None:
        found.append((guest, "guest"))
    if p.proc_bc_0:
        found.append(("openvz", "host"))
    elif p.proc_vz:
        found.append(("openvz", "guest"))
    if p.hyperv_kvp:
        found.append(("hyperv", "guest"))
    if p.self_status is not None:
        m = re.search(r"^(s_context|VxID):\s*(\d+)$", p.self_status, re.MULTILINE)
        if m:
            found.append(("linux-vserver", "host" if m.group(2) == "0" else "guest"))
    if p.self_cgroup is not None:
        m = re.search(r"^\d+:[^:]*:/(lxc|docker)/.+$", p.self_cgroup, re.MULTILINE) or re.search(
            r"^\d+:[^:]*:/[^/]+/(lxc|docker)-?.+$", p.self_cgroup, re.MULTILINE
        )
        environ = p.init_environ or ""
        if m:
            found.append((m.group(1), "guest"))
        elif "container=lxc" in environ:
            found.append(("lxc", "guest"))
        elif "container=systemd-nspawn" in environ:
            found.append(("nspawn", "guest"))
        elif p.lxc_on_path and re.search(r"\d:[^:]+:/$", p.self_cgroup, re.MULTILINE) and not found:
            found.append(("lxc", "host"))
    if p.dockerenv:
        found.append(("docker", "guest"))
    if p.lxd_sock:
        found.append(("lxd", "guest"))
    elif p.lxd_host:
        found.append(("lxd", "host"))
    if not found:
        return {}
    system, role = found[-1]
    return {"system": system, "role": role}
