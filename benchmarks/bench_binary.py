"""Size and cold start of the single executable (issue 7).

Run after building it (python3 -m PyInstaller --noconfirm --clean pyinstaller.spec):

    python3 benchmarks/bench_binary.py [--binary dist/pushy] [--runs 7]

Prints the binary's size, the median wall time of ``pushy version``, and the median time from
spawning ``pushy serve --listen 127.0.0.1:0`` on a fresh data directory (and on an existing
one) until ``run/server.json`` appears.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _env(data: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(data.parent), "PUSHY_DATA_DIR": str(data)}


def time_version(binary: Path, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [str(binary), "version"], check=True, capture_output=True, env=_env(Path("/tmp/x"))
        )
        out.append(time.perf_counter() - t0)
    return out


def time_serve(binary: Path, data: Path) -> float:
    ready = data / "run" / "server.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", "127.0.0.1:0"],
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = t0 + 60
        while not ready.exists():
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise SystemExit("serve did not become ready")
            time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="dist/pushy")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    binary = Path(args.binary).resolve()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"binary: {binary} ({binary.stat().st_size / 2**20:.1f} MiB)")
    v = time_version(binary, args.runs)
    print(
        f"pushy version: median {statistics.median(v):.3f} s"
        f" (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})"
    )
    first, again = [], []
    for _ in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="pushy-bench-"))
        try:
            first.append(time_serve(binary, tmp / "data"))
            again.append(time_serve(binary, tmp / "data"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"pushy serve until run/server.json, first start: median {statistics.median(first):.3f} s"
    )
    print(f"pushy serve until run/server.json, restart: median {statistics.median(again):.3f} s")
    print(f"(cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
