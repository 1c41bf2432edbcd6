"""Run ``pushy`` with a trio instrument that times every task step, to measure how long the
event loop is blocked (a step that runs for 0.9 s holds up every request and node for 0.9 s):
``run.py huge`` starts the server through this.

Environment:
    BENCH_LOOP_STATS: file rewritten every 0.2 s with ``{"steps": N, "longest": [[seconds,
        task, wall-clock end], ...]}``: the count of task steps so far and every step of
        ``BENCH_LOOP_MIN`` seconds or more (default 0.01), oldest first (at most 10,000).

Usage: ``python3 benchmarks/loopwrap.py serve --data-dir D --listen 127.0.0.1:0``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEEP = 10_000


class StepTimer(trio.abc.Instrument):
    """Times each task step; keeps those of ``minimum`` seconds or more."""

    def __init__(self, minimum: float) -> None:
        self.minimum = minimum
        self.steps = 0
        self.started = 0.0
        self.long: list[tuple[float, str, float]] = []
        self.lock = threading.Lock()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self.started
        self.steps += 1
        if took >= self.minimum:
            with self.lock:
                self.long.append((took, task.name, time.time()))
                del self.long[:-KEEP]

    def document(self) -> dict[str, Any]:
        with self.lock:
            return {"steps": self.steps, "longest": list(self.long)}


def _dump(path: Path, timer: StepTimer) -> None:
    while True:
        time.sleep(0.2)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(timer.document()))
        tmp.replace(path)


def main() -> None:
    out = os.environ.get("BENCH_LOOP_STATS")
    if out:
        timer = StepTimer(float(os.environ.get("BENCH_LOOP_MIN", "0.01")))
        threading.Thread(target=_dump, args=(Path(out), timer), daemon=True).start()
        real_run = trio.run

        def run(*args: Any, **kwargs: Any) -> Any:
            kwargs["instruments"] = [*kwargs.get("instruments", ()), timer]
            return real_run(*args, **kwargs)

        trio.run = run  # type: ignore[assignment]
    sys.argv = ["pushy", *sys.argv[1:]]
    from pushy_appliance.cli._main import main as pushy_main

    sys.exit(pushy_main())


if __name__ == "__main__":
    main()
