"""Run ``pushy`` with the garbage collector instrumented (and optionally re-tuned), to measure
what the collector costs a scenario: ``run.py --gc-stats`` starts the server through this.

Environment:
    BENCH_GC_STATS: file rewritten every 0.5 s with ``{"collections": [g0, g1, g2],
        "seconds": [g0, g1, g2]}`` (collections and seconds spent per generation so far).
    BENCH_GC_THRESHOLD: ``"a,b,c"`` for ``gc.set_threshold`` before start (experiments).
    BENCH_GC_DISABLE: ``1`` disables the collector entirely (experiments only).

Usage: ``python3 benchmarks/gcwrap.py serve --data-dir D --listen 127.0.0.1:0``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLLECTIONS = [0, 0, 0]
SECONDS = [0.0, 0.0, 0.0]
_started = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        generation = info["generation"]
        COLLECTIONS[generation] += 1
        SECONDS[generation] += time.perf_counter() - _started[0]


def _dump(path: Path) -> None:
    while True:
        time.sleep(0.5)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"collections": COLLECTIONS, "seconds": SECONDS}))
        tmp.replace(path)


def main() -> None:
    out = os.environ.get("BENCH_GC_STATS")
    if out:
        gc.callbacks.append(_callback)
        threading.Thread(target=_dump, args=(Path(out),), daemon=True).start()
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    if threshold:
        gc.set_threshold(*(int(x) for x in threshold.split(",")))
    if os.environ.get("BENCH_GC_DISABLE") == "1":
        gc.disable()
    sys.argv = ["pushy", *sys.argv[1:]]
    from pushy_appliance.cli._main import main as pushy_main

    sys.exit(pushy_main())


if __name__ == "__main__":
    main()
