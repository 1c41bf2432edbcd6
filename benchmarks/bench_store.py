"""Durable appends per second with group commit: 50 concurrent appenders, fsync on.

Run: ``python3 benchmarks/bench_store.py [--records N] [--appenders N] [--dir DIR]``.
Writes into a fresh temporary directory (or under ``--dir``, e.g. to measure a real disk
instead of a tmpfs), and removes it afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pushy_appliance.store import open_store


async def bench(directory: Path, records: int, appenders: int) -> None:
    per_task, extra = divmod(records, appenders)
    payload = b"x" * 200

    async with open_store(directory, fsync=True) as store:

        async def appender(index: int) -> None:
            for n in range(per_task + (1 if index < extra else 0)):
                await store.append({"type": "bench", "task": index, "n": n, "data": payload})

        start = time.perf_counter()
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for index in range(appenders):
                    nursery.start_soon(appender, index)
        elapsed = time.perf_counter() - start
        stats = store.statistics()

    print(f"store benchmark in {directory}")
    print(f"  {stats.last_seq} durable appends by {appenders} concurrent tasks, fsync on")
    print(f"  {elapsed:.3f} s: {stats.last_seq / elapsed:,.0f} appends/s")
    print(
        f"  {stats.fsyncs} group commits (fsyncs), "
        f"{stats.last_seq / max(stats.fsyncs, 1):.1f} records per fsync"
    )
    print(f"  {stats.bytes:,} bytes in {stats.segments} segment(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--appenders", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushy-bench-", dir=args.dir) as tmp:
        trio.run(bench, Path(tmp) / "store", args.records, args.appenders)


if __name__ == "__main__":
    main()
