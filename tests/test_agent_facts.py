"""Node facts: the config, the shaping and the 64 KiB cut (pure), the parsers of the system's
files (on fixtures), and the collector on this machine — without ohai, and with Debian's
``ohai`` compared to ohai's own output."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance.agent import facts_parse as fp
from pushy_appliance.agent.facts import collect_facts, run_ohai, system_facts
from pushy_appliance.errors import AgentError, ConfigError
from pushy_appliance.facts import (
    MAX_FACTS_BYTES,
    FactsConfig,
    assemble,
    encoded_size,
    facts_changed,
    fit_to_limit,
    parse_facts_config,
    select_ohai,
)

# --- config ---------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = parse_facts_config(None)
    assert config == FactsConfig()
    assert (config.ohai, config.ohai_timeout, config.refresh_interval) == ("auto", 60.0, 1800.0)
    assert (config.tags, config.environment, config.roles, dict(config.attributes)) == (
        (),
        None,
        (),
        {},
    )


def test_config_full() -> None:
    config = parse_facts_config(
        {
            "ohai": "off",
            "ohai_timeout": 10,
            "refresh_interval": 60.5,
            "attributes": {"rack": "r12", "app": {"port": 8080, "hosts": ["a", "b"]}},
        },
        tags=["web", "eu"],
        environment="production",
        roles=["base"],
    )
    assert config.ohai == "off"
    assert config.ohai_timeout == 10.0
    assert config.refresh_interval == 60.5
    assert config.tags == ("web", "eu")
    assert config.environment == "production"
    assert config.roles == ("base",)
    assert config.attributes["app"]["hosts"] == ("a", "b")
    with pytest.raises(TypeError):
        config.attributes["app"]["port"] = 1  # type: ignore[index]


CONFIG_ERRORS: list[tuple[dict[str, Any], dict[str, Any], str | None, str]] = [
    ({"ohia": "on"}, {}, None, "unknown key(s): facts.ohia"),
    ({"ohai": "yes"}, {}, "facts.ohai", "must be auto, on or off, not 'yes'"),
    ({"ohai_timeout": 0}, {}, "facts.ohai_timeout", "must be a positive number of seconds"),
    ({"ohai_timeout": "5"}, {}, "facts.ohai_timeout", "expected a number, got str"),
    ({"refresh_interval": True}, {}, "facts.refresh_interval", "expected a number, got bool"),
    (
        {"refresh_interval": math.inf},
        {},
        "facts.refresh_interval",
        "must be a positive number of seconds",
    ),
    ({"attributes": "x"}, {}, "facts.attributes", "must be a table"),
    (
        {"attributes": {"platform": "x"}},
        {},
        "facts.attributes.platform",
        "is the name of a collected fact; choose another",
    ),
    (
        {"attributes": {"name": "x"}},
        {},
        "facts.attributes.name",
        "is the name of a collected fact; choose another",
    ),
    (
        {"attributes": {"tags": ["x"]}},
        {},
        "facts.attributes.tags",
        "is the name of a collected fact; choose another",
    ),
    ({"attributes": {"a": {"b": math.nan}}}, {}, "facts.attributes.a.b", "must be a finite number"),
    (
        {"attributes": {"d": __import__("datetime").date(2024, 1, 1)}},
        {},
        "facts.attributes.d",
        "dates and times are not supported; quote it as a string",
    ),
    (
        {"attributes": {"l": [1, None]}},
        {},
        "facts.attributes.l[1]",
        "unsupported value of type NoneType",
    ),
    ({}, {"tags": "web"}, "tags", "expected a list of strings, got str"),
    ({}, {"tags": ["web", ""]}, "tags[1]", "must be a non-empty string"),
    ({}, {"roles": [1]}, "roles[0]", "must be a non-empty string"),
    ({}, {"environment": ""}, "environment", "must be a non-empty string"),
]


@pytest.mark.parametrize(("section", "top", "key", "reason"), CONFIG_ERRORS)
def test_config_errors(
    section: dict[str, Any], top: dict[str, Any], key: str | None, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_facts_config(section, source="agent.toml", **top)
    assert (info.value.source, info.value.key, info.value.reason) == ("agent.toml", key, reason)


# --- shaping --------------------------------------------------------------------------------

OHAI_DOC: dict[str, Any] = {
    "hostname": "web1",
    "machinename": "web1",
    "fqdn": "web1.eu.example.com",
    "domain": "eu.example.com",
    "platform": "ubuntu",
    "platform_version": "22.04",
    "platform_family": "debian",
    "os": "linux",
    "os_version": "5.15.0-91-generic",
    "ipaddress": "10.1.2.3",
    "ip6address": None,
    "macaddress": "02:FC:00:00:00:01",
    "kernel": {"name": "Linux", "release": "5.15.0-91-generic", "machine": "x86_64",
               "modules": {"kvm": {"size": "1"}}, "version": "#101"},
    "cpu": {"total": 4, "real": 1, "0": {"model_name": "x"}},
    "memory": {"total": "16318480kB", "free": "1kB"},
    "virtualization": {"systems": {"kvm": "guest"}, "system": "kvm", "role": "guest"},
    "uptime_seconds": 4242,
    "uptime": "1 hour",
    "packages": {"bash": {"version": "5"}},
}  # fmt: skip


def test_select_ohai_takes_the_default_set() -> None:
    assert select_ohai(OHAI_DOC) == {
        "hostname": "web1",
        "fqdn": "web1.eu.example.com",
        "domain": "eu.example.com",
        "platform": "ubuntu",
        "platform_version": "22.04",
        "platform_family": "debian",
        "os": "linux",
        "os_version": "5.15.0-91-generic",
        "ipaddress": "10.1.2.3",
        "macaddress": "02:FC:00:00:00:01",
        "kernel": {"name": "Linux", "release": "5.15.0-91-generic", "machine": "x86_64"},
        "cpu": {"total": 4},
        "memory": {"total": "16318480kB"},
        "virtualization": {"system": "kvm", "role": "guest"},
        "uptime_seconds": 4242,
    }


def test_assemble_adds_ours_then_the_operators() -> None:
    config = parse_facts_config(
        {"attributes": {"rack": "r12", "app": {"ports": [80, 443]}}},
        tags=["web"],
        environment="production",
        roles=["base", "web"],
    )
    facts = assemble({"platform": "ubuntu", "junk": 1}, config, agent_version="0.1.0")
    assert facts == {
        "platform": "ubuntu",
        "pushy_agent_version": "0.1.0",
        "tags": ["web"],
        "roles": ["base", "web"],
        "chef_environment": "production",
        "rack": "r12",
        "app": {"ports": [80, 443]},
    }


def test_fit_keeps_facts_under_the_limit() -> None:
    facts = {"platform": "ubuntu", "rack": "r1"}
    assert fit_to_limit(facts, custom=["rack"]) == type(fit_to_limit(facts, []))(
        facts, encoded_size(facts)
    )


def test_fit_drops_the_largest_custom_attributes_first() -> None:
    facts = {
        "platform": "ubuntu",
        "tags": ["web"],
        "big": "x" * 40_000,
        "medium": "y" * 20_000,
        "small": "z" * 10_000,
    }
    size = encoded_size(facts)
    fitted = fit_to_limit(facts, custom=["small", "medium", "big"])
    assert fitted.dropped == ("big",)
    assert fitted.facts == {
        "platform": "ubuntu",
        "tags": ["web"],
        "medium": "y" * 20_000,
        "small": "z" * 10_000,
    }
    assert fitted.size == encoded_size(fitted.facts) <= MAX_FACTS_BYTES
    assert fitted.error == (
        f"facts are {size} bytes encoded, over the 65536-byte limit: dropped big"
    )


def test_fit_then_drops_the_operators_facts_and_says_when_still_over() -> None:
    facts = {"hostname": "h" * 70_000, "tags": ["t" * 100], "roles": ["r"], "rack": "x"}
    fitted = fit_to_limit(facts, custom=["rack"])
    assert fitted.dropped == ("rack", "tags", "roles")
    assert fitted.facts == {"hostname": "h" * 70_000}
    assert fitted.error is not None
    assert fitted.error.endswith(f"dropped rack, tags, roles; still {fitted.size} bytes")


def test_facts_changed_ignores_uptime() -> None:
    old = {"platform": "ubuntu", "uptime_seconds": 10}
    assert facts_changed(None, old)
    assert not facts_changed(old, {"platform": "ubuntu", "uptime_seconds": 99})
    assert facts_changed(old, {"platform": "debian", "uptime_seconds": 10})
    assert facts_changed(old, {"uptime_seconds": 10})
    assert facts_changed(old, {**old, "tags": ["web"]})


# --- the system's files, on fixtures ---------------------------------------------------------

ROUTE = textwrap.dedent("""\
    Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
    eth1\t00000000\t01010A0A\t0003\t0\t0\t600\t00000000\t0\t0\t0
    eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
    eth0\t008000C0\t00000000\t0001\t0\t0\t0\t0080FFFF\t0\t0\t0
    eth1\t00000A0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
    """)
FIB_TRIE = textwrap.dedent("""\
    Main:
      +-- 0.0.0.0/0 3 0 5
         |-- 0.0.0.0
            /0 universe UNICAST
         +-- 127.0.0.0/8 2 0 2
            |-- 127.0.0.1
               /32 host LOCAL
         |-- 192.0.2.7
            /32 host LOCAL
         |-- 192.0.128.9
            /32 host LOCAL
         |-- 10.10.3.4
            /32 host LOCAL
         |-- 192.0.2.255
            /32 link BROADCAST
    Local:
         |-- 192.0.2.7
            /32 host LOCAL
    """)
IF_INET6 = textwrap.dedent("""\
    fd000000000000000000000000000002 04 40 00 80     eth0
    00000000000000000000000000000001 01 80 10 80       lo
    fe8000000000000000fc00fffe000001 04 40 20 80     eth0
    20010db8000000000000000000000009 05 30 00 80     eth1
    """)
IPV6_ROUTE = textwrap.dedent("""\
    fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
    00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
    00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
    """)  # noqa: E501


def test_os_release_and_platform() -> None:
    info = fp.parse_os_release(
        '# comment\nNAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="9.3"\n'
        'ID_LIKE=\'fedora\'\nPRETTY_NAME="Red Hat \\"Enterprise\\""\n'
    )
    assert info == {
        "NAME": "Red Hat Enterprise Linux",
        "ID": "rhel",
        "VERSION_ID": "9.3",
        "ID_LIKE": "fedora",
        "PRETTY_NAME": 'Red Hat "Enterprise"',
    }
    assert fp.platform_facts(info, kernel_release="5.14") == {
        "platform": "redhat",
        "platform_version": "9.3",
        "platform_family": "rhel",
    }


@pytest.mark.parametrize(
    ("os_release", "extra", "expected"),
    [
        ({"ID": "ubuntu", "VERSION_ID": "22.04"}, {}, ("ubuntu", "22.04", "debian")),
        ({"ID": "debian"}, {"debian_version": "trixie/sid\n"}, ("debian", "trixie/sid", "debian")),
        (
            {"ID": "centos", "VERSION_ID": "7"},
            {"redhat_release": "CentOS Linux release 7.9.2009 (Core)"},
            ("centos", "7.9.2009", "rhel"),
        ),
        ({"ID": "amzn", "VERSION_ID": "2023"}, {}, ("amazon", "2023", "amazon")),
        ({"ID": "opensuse-leap", "VERSION_ID": "15.5"}, {}, ("opensuseleap", "15.5", "suse")),
        ({"ID": "arch"}, {}, ("arch", "6.6.1-arch1", "arch")),
        ({"ID": "alpine", "VERSION_ID": "3.19.0"}, {}, ("alpine", "3.19.0", "alpine")),
        ({"ID": "rocky", "VERSION_ID": "9.3"}, {}, ("rocky", "9.3", None)),
    ],
)
def test_platform_like_ohai(
    os_release: dict[str, str], extra: dict[str, str], expected: tuple[str, str, str | None]
) -> None:
    got = fp.platform_facts(os_release, kernel_release="6.6.1-arch1", **extra)
    assert (got["platform"], got["platform_version"], got.get("platform_family")) == expected


def test_hostname_fqdn_domain() -> None:
    assert fp.hostname_facts("web1", "web1.eu.example.com") == {
        "hostname": "web1",
        "fqdn": "web1.eu.example.com",
        "domain": "eu.example.com",
    }
    assert fp.hostname_facts("web1.eu", None) == {"hostname": "web1"}
    assert fp.hostname_facts("vm", "vm") == {"hostname": "vm", "fqdn": "vm"}


def test_cpu_memory_uptime() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: X\n\nprocessor\t: 1\nmodel name\t: X\n"
    assert fp.cpu_total(cpuinfo) == 2
    assert fp.cpu_total("vendor_id : IBM/S390\nprocessor 0: version = FF\nprocessor 1: x\n") == 2
    assert fp.cpu_total("") is None
    assert fp.memory_total("MemTotal:       16318480 kB\nMemFree: 1 kB\n") == "16318480kB"
    assert fp.memory_total("") is None
    assert fp.uptime_seconds("2947.88 4640.17\n") == 2947
    assert fp.uptime_seconds("") is None


def test_ipv4_like_ohai() -> None:
    assert fp.default_route_v4(ROUTE) == ("eth0", "192.0.2.1")
    addresses = fp.ipv4_addresses(FIB_TRIE, ROUTE)
    assert addresses == [
        fp.Address("lo", "127.0.0.1", 8, "host"),
        fp.Address("eth0", "192.0.2.7", 24, "global"),
        fp.Address("eth0", "192.0.128.9", 17, "global"),
        fp.Address("eth1", "10.10.3.4", 16, "global"),
    ]
    # on the default route's interface, the address whose network holds the gateway
    assert fp.pick_address(addresses, ("eth0", "192.0.2.1")) == addresses[1]
    # no address there holds the gateway: the first by longest prefix
    assert fp.pick_address(addresses, ("eth0", "203.0.113.1")) == addresses[1]
    assert fp.pick_address(addresses, ("eth0", "192.0.128.1")) == addresses[2]
    # on-link default route
    assert fp.pick_address(addresses, ("eth1", "0.0.0.0")) == addresses[3]
    # no default route: global before host scope, then longest prefix
    assert fp.pick_address(addresses, None) == addresses[1]
    assert fp.pick_address([addresses[0]], None) == addresses[0]
    assert fp.pick_address(addresses, ("eth9", "10.0.0.1")) is None
    assert fp.default_route_v4(ROUTE.splitlines()[0]) is None


def test_ipv6_like_ohai() -> None:
    addresses = fp.ipv6_addresses(IF_INET6)
    assert addresses == [
        fp.Address("eth0", "fd00::2", 64, "global"),
        fp.Address("lo", "::1", 128, "host"),
        fp.Address("eth0", "fe80::fc:ff:fe00:1", 64, "link"),
        fp.Address("eth1", "2001:db8::9", 48, "global"),
    ]
    default = fp.default_route_v6(IPV6_ROUTE)
    assert default == ("eth0", "fd00::1")
    assert fp.pick_address(addresses, default) == addresses[0]
    assert fp.pick_address(addresses, ("eth0", "fe80::1")) == addresses[0]
    assert fp.pick_address(addresses, None) == addresses[0]  # longest prefix first
    assert fp.pick_address(addresses[1:], None) == addresses[3]  # global before link, host


def test_macaddress() -> None:
    assert fp.macaddress("02:fc:00:00:00:01\n", 0x1003) == "02:FC:00:00:00:01"
    assert fp.macaddress("00:00:00:00:00:00\n", 0x9) is None
    assert fp.macaddress("06:ae:45:9e:04:f9\n", 0x82) is None  # NOARP
    assert fp.macaddress(None, None) is None
    assert fp.macaddress("garbage", None) is None


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        (fp.VirtProbes(), {}),
        (fp.VirtProbes(docker_on_path=True), {"system": "docker", "role": "host"}),
        (
            fp.VirtProbes(docker_on_path=True, sys_kvm=True, cpuinfo="flags : fpu hypervisor"),
            {"system": "kvm", "role": "guest"},
        ),
        (fp.VirtProbes(sys_kvm=True, cpuinfo="flags : fpu vmx"), {"system": "kvm", "role": "host"}),
        (
            fp.VirtProbes(cpuinfo="model name : QEMU Virtual CPU version 2.5+"),
            {"system": "kvm", "role": "guest"},
        ),
        (
            fp.VirtProbes(proc_xen=True, xen_capabilities="control_d"),
            {"system": "xen", "role": "host"},
        ),
        (fp.VirtProbes(proc_xen=True), {"system": "xen", "role": "guest"}),
        (fp.VirtProbes(proc_modules="vboxguest 1 0 - Live\n"), {"system": "vbox", "role": "guest"}),
        (fp.VirtProbes(dmi_vendor="VMware, Inc.\n"), {"system": "vmware", "role": "guest"}),
        (
            fp.VirtProbes(dmi_vendor="Microsoft Corporation", dmi_product="Virtual Machine"),
            {"system": "hyperv", "role": "guest"},
        ),
        (fp.VirtProbes(dmi_product="OpenStack Nova"), {"system": "openstack", "role": "guest"}),
        (
            fp.VirtProbes(self_cgroup="12:memory:/docker/0123abcd\n"),
            {"system": "docker", "role": "guest"},
        ),
        (
            fp.VirtProbes(self_cgroup="1:cpu:/\n", init_environ="container=lxc\0"),
            {"system": "lxc", "role": "guest"},
        ),
        (
            fp.VirtProbes(self_cgroup="1:cpu:/\n", lxc_on_path=True),
            {"system": "lxc", "role": "host"},
        ),
        (fp.VirtProbes(self_status="VxID:\t0\n"), {"system": "linux-vserver", "role": "host"}),
        (
            fp.VirtProbes(sys_kvm=True, cpuinfo="hypervisor", dockerenv=True),
            {"system": "docker", "role": "guest"},
        ),
        (fp.VirtProbes(dockerenv=True, lxd_sock=True), {"system": "lxd", "role": "guest"}),
        (fp.VirtProbes(proc_bc_0=True, proc_vz=True), {"system": "openvz", "role": "host"}),
    ],
)
def test_virtualization_like_ohai(probes: fp.VirtProbes, expected: dict[str, str]) -> None:
    assert fp.virtualization(probes) == expected


# --- the collector on this machine ----------------------------------------------------------


def _expected_source_address(family: int, default: tuple[str, str] | None) -> str | None:
    """Independently of the parsers: the address the kernel picks to reach the gateway."""
    if default is None:
        return None
    gateway = default[1]
    if gateway in ("0.0.0.0", "::"):
        return None
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((gateway, 9))
        return str(s.getsockname()[0])


def _this_machine() -> dict[str, Any]:
    """What this machine says, read without the collector's parsers."""
    host = socket.gethostname()
    os_release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    uname = os.uname()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    v4 = fp.default_route_v4(Path("/proc/net/route").read_text())
    v6 = fp.default_route_v6(Path("/proc/net/ipv6_route").read_text())
    return {
        "hostname": host.split(".")[0],
        "fqdn": socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME)[0][3],
        # Debian and Ubuntu keep their os-release ID as ohai's platform
        "platform": os_release["ID"].strip('"'),
        "platform_version": os_release["VERSION_ID"].strip('"'),
        "os": "linux",
        "os_version": uname.release,
        "kernel": {"name": uname.sysname, "release": uname.release, "machine": uname.machine},
        "cpu": {"total": sum(1 for line in cpuinfo.splitlines() if line.startswith("processor"))},
        "memory": {"total": Path("/proc/meminfo").read_text().split()[1] + "kB"},
        "uptime_seconds": float(Path("/proc/uptime").read_text().split()[0]),
        "ipaddress": _expected_source_address(socket.AF_INET, v4),
        "ip6address": _expected_source_address(socket.AF_INET6, v6),
    }


async def test_fallback_on_this_machine() -> None:
    collected = await collect_facts(
        parse_facts_config({"ohai": "off"}, tags=["web"]),
        agent_version="9.9",
        node_name="n1",
        which=lambda name: None,
    )
    expected = _this_machine()
    facts = collected.facts
    assert collected.source == "fallback"
    assert collected.problems == ()
    assert collected.size == encoded_size(facts)
    for name in ("hostname", "fqdn", "platform", "platform_version", "os", "os_version"):
        assert facts[name] == expected[name], name
    for name in ("kernel", "cpu", "memory"):
        assert facts[name] == expected[name], name
    assert 0 < facts["uptime_seconds"] <= expected["uptime_seconds"]
    assert facts.get("ipaddress") == expected["ipaddress"]
    assert facts.get("ip6address") == expected["ip6address"]
    assert facts["pushy_agent_version"] == "9.9"
    assert facts["tags"] == ["web"]
    # nothing is nil: a fact the machine lacks is left out
    assert all(v is not None for v in facts.values())


async def test_fallback_reads_under_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID="rocky"\nVERSION_ID="9.3"\n')
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text("processor : 0\n" * 1 + "\nprocessor : 1\n")
    (tmp_path / "proc/meminfo").write_text("MemTotal:       1000 kB\n")
    (tmp_path / "proc/uptime").write_text("77.5 1.0\n")
    (tmp_path / "proc/net/route").write_text(ROUTE)
    (tmp_path / "proc/net/fib_trie").write_text(FIB_TRIE)
    (tmp_path / "proc/net/if_inet6").write_text(IF_INET6)
    (tmp_path / "proc/net/ipv6_route").write_text(IPV6_ROUTE)
    (tmp_path / "sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "sys/class/net/eth0/address").write_text("02:fc:00:00:00:07\n")
    (tmp_path / "sys/class/net/eth0/flags").write_text("0x1003\n")
    (tmp_path / ".dockerenv").write_text("")
    facts = await system_facts(which=lambda name: None, root=tmp_path)
    host_facts = ("hostname", "fqdn", "domain", "os", "os_version", "kernel")
    assert {k: v for k, v in facts.items() if k not in host_facts} == {
        "platform": "rocky",
        "platform_version": "9.3",
        "cpu": {"total": 2},
        "memory": {"total": "1000kB"},
        "uptime_seconds": 77,
        "ipaddress": "192.0.2.7",
        "ip6address": "fd00::2",
        "macaddress": "02:FC:00:00:00:07",
        "virtualization": {"system": "docker", "role": "guest"},
    }


def _fake_ohai(tmp_path: Path, body: str) -> str:
    path = tmp_path / "ohai"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_ohai_output_is_used(tmp_path: Path) -> None:
    fake = _fake_ohai(tmp_path, f"import json; print(json.dumps({OHAI_DOC!r}))")
    collected = await collect_facts(
        parse_facts_config({"ohai": "on"}, environment="prod"),
        agent_version="1",
        node_name="n1",
        which=lambda name: fake if name == "ohai" else None,
    )
    assert collected.source == "ohai"
    assert collected.facts == {
        **select_ohai(OHAI_DOC),
        "pushy_agent_version": "1",
        "chef_environment": "prod",
    }


async def test_ohai_on_but_missing_is_an_error() -> None:
    with pytest.raises(AgentError, match=r'^facts.ohai is "on" but ohai is not on PATH$'):
        await collect_facts(
            parse_facts_config({"ohai": "on"}),
            agent_version="1",
            node_name="n1",
            which=lambda name: None,
        )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("import sys; sys.stderr.write('boom\\n'); sys.exit(3)", "exited with status 3: boom"),
        ("print('not json')", "printed no JSON"),
        ("print('[1]')", "printed JSON that is not an object"),
    ],
)
async def test_ohai_failing(tmp_path: Path, body: str, problem: str) -> None:
    fake = _fake_ohai(tmp_path, body)
    which = {"ohai": fake}.get
    with pytest.raises(AgentError, match=f'^facts.ohai is "on" but ohai \\({fake}\\) {problem}'):
        await collect_facts(
            parse_facts_config({"ohai": "on"}), agent_version="1", node_name="n1", which=which
        )
    collected = await collect_facts(
        parse_facts_config({"ohai": "auto"}), agent_version="1", node_name="n1", which=which
    )
    assert collected.source == "fallback"
    assert len(collected.problems) == 1
    assert collected.problems[0].startswith(f"ohai ({fake}) {problem}")
    assert collected.problems[0].endswith("; computing facts without it")
    assert collected.facts["platform"] and collected.facts["kernel"]


async def test_ohai_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    fake = _fake_ohai(tmp_path, "import time; time.sleep(60)")
    which = {"ohai": fake}.get
    start = trio.current_time()
    collected = await collect_facts(
        parse_facts_config({"ohai": "auto", "ohai_timeout": 0.5}),
        agent_version="1",
        node_name="n1",
        which=which,
    )
    assert trio.current_time() - start < 30
    assert collected.source == "fallback"
    assert collected.problems[0] == (
        f"ohai ({fake}) did not finish within 0.5 s; computing facts without it"
    )


async def test_run_ohai_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="could not start"):
        await run_ohai(str(tmp_path / "nope"))


async def test_over_the_limit_logs_and_drops_custom_attributes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_facts_config(
        {"ohai": "off", "attributes": {"blob": "x" * 70_000, "rack": "r1"}}, tags=["web"]
    )
    with caplog.at_level(logging.ERROR, logger="pushy_appliance.agent.facts"):
        collected = await collect_facts(
            config, agent_version="1", node_name="n7", which=lambda name: None
        )
    assert "blob" not in collected.facts
    assert collected.facts["rack"] == "r1"
    assert collected.facts["tags"] == ["web"]
    assert collected.size <= MAX_FACTS_BYTES
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("node n7: facts are ")
    assert record.getMessage().endswith("over the 65536-byte limit: dropped blob")
    assert collected.problems == (record.getMessage().removeprefix("node n7: "),)


# --- against Debian's ohai -------------------------------------------------------------------


def _ohai() -> str:
    """Debian's ohai: required in CI (scripts/test installs it), else the test is skipped."""
    path = shutil.which("ohai")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("ohai is not installed; CI needs Debian's ohai (apt-get install ohai)")
        pytest.skip("ohai is not installed (apt-get install ohai)")
    return path


def _ohai_own_output(path: str) -> dict[str, Any]:
    done = subprocess.run([path, "-l", "fatal"], capture_output=True, check=True, timeout=300)
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


async def test_ohai_facts_equal_ohais_own_output() -> None:
    path = _ohai()
    collected = await collect_facts(
        parse_facts_config({"ohai": "on"}), agent_version="1", node_name="n1"
    )
    own = await trio.to_thread.run_sync(_ohai_own_output, path)
    assert collected.source == "ohai"
    for name in ("platform", "platform_version", "ipaddress", "fqdn"):
        assert collected.facts[name] == own[name], name


async def test_fallback_equals_ohai_on_this_machine() -> None:
    """The computed facts match ohai's where ohai is right: virtualization is left out,
    because ohai 16's plugin stops at an unreadable /proc/1/environ in containers."""
    path = _ohai()
    own = select_ohai(await trio.to_thread.run_sync(_ohai_own_output, path))
    computed = await system_facts()
    for name in ("virtualization", "uptime_seconds"):
        own.pop(name, None)
        computed.pop(name, None)
    assert computed == own
