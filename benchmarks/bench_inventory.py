"""The inventory through the real API: query latency over 1k / 10k / 20k nodes' facts, and
the memory the facts cost per node.

Run: ``python3 benchmarks/bench_inventory.py [--nodes 1000,10000,20000] [--repeat 20]``.

For each fleet size a ``pushy serve`` subprocess gets that many node clients (provisioned
offline), and simulated nodes (``nodesim.py``: real TLS, signed upgrades, a ``hello`` with the
default fact set in ohai's names and formats) connect; past 10,000 nodes (this machine's
descriptor limit is 20,000 per process) the first 10,000 connect, report their facts and leave,
then the next ones connect: the server then holds every node's facts, half of them offline.
Each query is then sent ``--repeat`` times as a signed ``GET …/pushy/nodes?q=QUERY&rows=10``
on a keep-alive TLS connection, and two times are reported per query: the *server time*, what
the route measured from its start to its response (signature check, search over every node,
the first ten rows, JSON; the ``app`` of its ``Server-Timing`` header), and the *client time*,
the whole request as the client sees it (plus TLS, HTTP parsing, the event loop's other work).
Memory: ``tracemalloc`` over the server's node model holding 20,000 nodes' default facts
(packed and flattened), per node.

``--in-process`` measures instead what the search itself costs, without a server: the CPU
milliseconds (``time.process_time``) of ``Inventory.search`` — the route's code path — over a
node model holding each fleet size's default facts, half the nodes online (the node link's
answer from a set), median and p95 of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path
from urllib.parse import quote

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import node_facts
from harness import (
    ORG,
    HttpConnection,
    ServerProcess,
    SimFleet,
    admin_key,
    node_names,
    provision_clients,
    signed_request_bytes,
)

from pushy_appliance import chef_auth
from pushy_appliance.nodes.inventory import Inventory
from pushy_appliance.nodes.model import NodeModel
from pushy_appliance.search import compile_query

QUERIES = [
    "*:*",
    "platform:ubuntu AND tags:web",
    "ipaddress:10.0.0.0/9",
    "fqdn:*.eu.example.com",
    "status:online AND availability:available AND roles:web",
    "web",
    "kernel_*:aarch64",
]

WAVE = 10_000
"""Most simulated nodes connected at once."""


def model_bytes_per_node(count: int) -> float:
    """Bytes per node of the node model holding ``count`` nodes' default facts."""
    rng = random.Random(1)
    records = [
        {
            "t": "node.seen",
            "org": "o",
            "name": f"web-{i}",
            "status": "online",
            "at": 1.0,
            "incarnation": f"{i:032x}",
            "facts": node_facts(i, rng),
        }
        for i in range(count)
    ]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    model = NodeModel()
    for r in records:
        model.apply(r)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(model.names("o")) == count
    return (after - before) / count


class _Link:
    """The node link's ``status``: online for the names in ``online``."""

    def __init__(self, online: set[str]) -> None:
        self.online = online

    def status(self, org: str, name: str) -> tuple[str, str]:
        return ("online", "available") if name in self.online else ("offline", "unavailable")


async def search_cpu(size: int, repeat: int) -> dict[str, list[float]]:
    """``{query: CPU ms of each run}`` of ``Inventory.search`` over ``size`` nodes."""
    rng = random.Random(1)
    model = NodeModel()
    names = node_names(size)
    for i, name in enumerate(names):
        model.apply({"t": "node.seen", "org": ORG, "name": name, "status": "online", "at": 1.0,
                     "incarnation": f"{i:032x}", "facts": node_facts(i, rng)})  # fmt: skip
    db = types.SimpleNamespace(models={"nodes": model})
    inventory = Inventory(db, None, _Link(set(names[::2])))  # type: ignore[arg-type]
    out: dict[str, list[float]] = {}
    for text in QUERIES:
        runs = []
        for _ in range(repeat):
            t0 = time.process_time()
            await inventory.search(ORG, compile_query(text))
            runs.append((time.process_time() - t0) * 1000)
        out[text] = runs
    return out


def print_table(title: str, sizes: list[int], results: dict[int, dict[str, list[float]]]) -> None:
    print()
    print(f"{title}, median / p95 ms".ljust(60) + "".join(f"{n:>16,}" for n in sizes))
    for text in QUERIES:
        cells = []
        for n in sizes:
            runs = sorted(results[n][text])
            p95 = runs[min(len(runs) - 1, int(len(runs) * 0.95))]
            cells.append(f"{statistics.median(runs):6.1f} / {p95:5.1f}")
        print(text.ljust(60) + "".join(f"{c:>16}" for c in cells))


def server_ms(header: str) -> float:
    """The ``app`` duration of a ``Server-Timing`` header, in milliseconds."""
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "app":
            return float(dur)
    raise ValueError(f"no app duration in Server-Timing: {header!r}")


async def measure(size: int, repeat: int, work: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{query: (client ms, server ms)}`` of ``repeat`` requests each over ``size`` nodes."""
    data = work / f"inv-{size}"
    key = chef_auth.generate_private_key()
    key_file = work / f"node-{size}.pem"
    key_file.write_text(chef_auth.private_key_pem(key))
    server = ServerProcess(data)
    names = node_names(size)
    await provision_clients(data, names, chef_auth.public_key_pem(key.public_key()))
    await server.start()
    out: dict[str, tuple[list[float], list[float]]] = {}
    try:
        waves = [(f, min(WAVE, size - f)) for f in range(0, size, WAVE)]
        for n, (first, count) in enumerate(waves):
            fleet = SimFleet(
                server.node_url, server.ca_file, key_file, count, procs=2, connect_concurrency=32
            )
            for argv in fleet.argvs:
                at = argv.index("--first") + 1
                argv[at] = str(int(argv[at]) + first)
            async with fleet.running():
                await fleet.wait_for("connected", count, within=900)
                if n < len(waves) - 1:
                    continue  # this wave leaves: its nodes go offline, their facts stay
                host, port = server.http_address
                conn = await HttpConnection.connect(host, port, server.ca_file)
                admin = admin_key(data)
                path = f"/organizations/{ORG}/pushy/nodes"
                for text in QUERIES:
                    request = signed_request_bytes(
                        "GET", path, f"{host}:{port}", "admin", admin,
                        query=f"q={quote(text, safe='')}&rows=10",
                    )  # fmt: skip
                    runs: list[float] = []
                    served: list[float] = []
                    for _ in range(repeat):
                        t0 = time.perf_counter()
                        status, body = await conn.request(request)
                        runs.append((time.perf_counter() - t0) * 1000)
                        assert status == 200, body[:200]
                        served.append(server_ms(conn.headers["server-timing"]))
                    out[text] = (runs, served)
                await conn.aclose()
    finally:
        await server.stop()
    return out


async def main_async(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.nodes.split(",")]
    print(f"node model, default facts: {model_bytes_per_node(20_000):.0f} B per node (20,000)")
    if args.in_process:
        cpu = {size: await search_cpu(size, args.repeat) for size in sizes}
        print_table("Inventory.search in process, CPU", sizes, cpu)
        return
    results: dict[int, dict[str, tuple[list[float], list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
        for size in sizes:
            t0 = time.perf_counter()
            results[size] = await measure(size, args.repeat, Path(tmp))
            print(f"  {size:,} nodes measured in {time.perf_counter() - t0:.0f} s", flush=True)
    for label, which in (("server", 1), ("client", 0)):
        table = {n: {q: results[n][q][which] for q in QUERIES} for n in sizes}
        print_table(f"GET pushy/nodes?q=QUERY&rows=10, {label} time", sizes, table)


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, WAVE * 2 + 2_000)), hard))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1000,10000,20000", help="fleet sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=20, help="requests per query and size")
    parser.add_argument(
        "--in-process", action="store_true", help="the search's CPU in process, no server"
    )
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
