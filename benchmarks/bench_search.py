"""Search over a fleet's facts: memory per node and the time of one query over every node.

Run: ``python3 benchmarks/bench_search.py [--nodes 1000,10000,20000] [--repeat 5] [--seed 1]``.

Builds a fleet of synthetic nodes whose facts have the default set's names and ohai's formats
(unique host names, addresses, MACs and uptimes; a mix of platforms, tags, roles and
environments), flattens each once as the server does when facts change, then times each
query over the whole fleet — the best and the median of ``--repeat`` runs, in milliseconds of
one CPU. Memory per node is measured with ``tracemalloc`` over the largest fleet: the
flattened form (what search reads) and the facts kept as their msgpack encoding (what a
registry can keep for display), each per node.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pushy_appliance.search import FlatFacts, compile_query, flatten_facts

QUERIES = [
    "*:*",
    "platform:ubuntu",
    "platform:ubuntu AND tags:web",
    "platform_family:rhel OR platform_family:debian",
    "tags:web -chef_environment:staging",
    "name:web-1*",
    "kernel_machine:x86_64 AND NOT roles:db",
    "ipaddress:10.0.0.0/9",
    "ip6address:fd00::/8",
    "cpu_total:[8 TO *]",
    "platform_version:[20 TO 22.10]",
    "fqdn:*.eu.example.com",
    "status:online AND availability:available AND roles:web",
    "kernel_*:aarch64",
    "web",
]

PLATFORMS = [
    ("ubuntu", "22.04", "debian"),
    ("ubuntu", "20.04", "debian"),
    ("debian", "12", "debian"),
    ("redhat", "9.3", "rhel"),
    ("rocky", "8.9", "rhel"),
    ("amazon", "2023", "amazon"),
]
TAGS = ["web", "db", "cache", "batch", "canary", "pci", "blue", "green"]
ROLES = ["base", "web", "db", "monitoring", "worker"]
ENVIRONMENTS = ["production", "staging", "dev"]
REGIONS = ["eu", "us", "ap"]


def node_facts(i: int, rng: random.Random) -> dict[str, Any]:
    """The default fact set of one node, in ohai's names and formats."""
    platform, version, family = rng.choice(PLATFORMS)
    region = rng.choice(REGIONS)
    host = f"web-{i}"
    machine = rng.choice(["x86_64", "x86_64", "aarch64"])
    release = f"5.15.0-{rng.randrange(60, 120)}-generic"
    return {
        "hostname": host,
        "fqdn": f"{host}.{region}.example.com",
        "domain": f"{region}.example.com",
        "platform": platform,
        "platform_version": version,
        "platform_family": family,
        "os": "linux",
        "os_version": release,
        "ipaddress": f"10.{rng.randrange(256)}.{i // 256 % 256}.{i % 256}",
        "ip6address": f"fd00::{i:x}",
        "macaddress": ":".join(f"{rng.randrange(256):02X}" for _ in range(6)),
        "kernel": {"name": "Linux", "release": release, "machine": machine},
        "cpu": {"total": rng.choice([2, 4, 8, 16, 32])},
        "memory": {"total": f"{rng.choice([4, 8, 16, 64]) * 1024 * 1024}kB"},
        "virtualization": {"system": "kvm", "role": "guest"},
        "uptime_seconds": rng.randrange(100, 10_000_000),
        "pushy_agent_version": "0.1.0",
        "tags": rng.sample(TAGS, rng.randrange(0, 4)),
        "chef_environment": rng.choice(ENVIRONMENTS),
        "roles": rng.sample(ROLES, rng.randrange(1, 3)),
    }


def fleet(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [node_facts(i, rng) for i in range(count)]


def measure_memory(raw: list[dict[str, Any]]) -> tuple[float, float]:
    """Bytes per node of the flattened facts, and of the facts kept msgpack-encoded."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    flat = [flatten_facts(f) for f in raw]
    gc.collect()
    after_flat = tracemalloc.get_traced_memory()[0]
    packed = [msgpack.packb(f, use_bin_type=True) for f in raw]
    gc.collect()
    after_packed = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n = len(raw)
    del flat, packed
    return (after_flat - before) / n, (after_packed - after_flat) / n


def time_query(
    text: str, nodes: list[tuple[str, str, str, FlatFacts]], repeat: int
) -> tuple[float, float, int]:
    """Best and median milliseconds of one pass of ``text`` over ``nodes``, and its hits."""
    query = compile_query(text)
    test = query.test
    live_of = {n: (s, a) for n, s, a, _ in nodes}
    live = live_of.__getitem__
    runs = []
    hits = 0
    for _ in range(repeat):
        start = time.perf_counter()
        hits = sum(1 for n, _s, _a, f in nodes if test(n, live, f))
        runs.append((time.perf_counter() - start) * 1000)
    return min(runs), statistics.median(runs), hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1000,10000,20000", help="fleet sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query and size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]

    raw = fleet(max(sizes), args.seed)
    flat_bytes, packed_bytes = measure_memory(raw)
    print(f"memory per node ({len(raw)} nodes, default fact set):")
    print(f"  flattened for search : {flat_bytes:7.0f} B")
    print(f"  msgpack-encoded facts: {packed_bytes:7.0f} B")
    print(f"  both                 : {flat_bytes + packed_bytes:7.0f} B")

    rng = random.Random(args.seed)
    start = time.perf_counter()
    flat = [flatten_facts(f) for f in raw]
    flatten_us = (time.perf_counter() - start) / len(raw) * 1e6
    print(f"flatten: {flatten_us:.1f} µs per node")
    states = [
        ("online", "available") if rng.random() < 0.9 else ("offline", "unavailable") for _ in raw
    ]
    everyone = [(f"web-{i}", *states[i], flat[i]) for i in range(len(raw))]

    print()
    header = "query".ljust(52) + "".join(f"{n:>18,}" for n in sizes)
    print(header)
    print(" " * 52 + "".join(f"{'best/median ms':>18}" for _ in sizes))
    worst = dict.fromkeys(sizes, 0.0)
    for text in QUERIES:
        cells = []
        for n in sizes:
            best, median, hits = time_query(text, everyone[:n], args.repeat)
            worst[n] = max(worst[n], median)
            cells.append(f"{best:7.1f}/{median:5.1f} ({hits * 100 // n:3d}%)")
        print(text.ljust(52) + "".join(f"{c:>18}" for c in cells))
    print("slowest median".ljust(52) + "".join(f"{worst[n]:>18.1f}" for n in sizes))


if __name__ == "__main__":
    main()
