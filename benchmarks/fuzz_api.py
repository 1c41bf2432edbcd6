"""A longer schemathesis run against a running appliance than CI's (``tests/test_api_fuzz.py``).

Starts ``pushy serve`` on 127.0.0.1 (port 0, a temporary data directory), fuzzes every
operation of its OpenAPI document with real Chef signing, then runs stateful scenarios along
the document's links, and prints the cases tried and the failures found (no 5xx, every
response as the document says)::

    python3 benchmarks/fuzz_api.py --examples 300 --scenarios 200 --steps 15

Exit status 1 when anything failed. Traffic goes to 127.0.0.1 only; the run is bounded by
``--examples``/``--scenarios`` and by ``--seconds``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from apifuzz import run_fuzz, running_pushy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300, help="cases per operation")
    parser.add_argument("--scenarios", type=int, default=200, help="stateful scenarios")
    parser.add_argument("--steps", type=int, default=15, help="most calls in a scenario")
    parser.add_argument("--seconds", type=float, default=1800.0, help="time budget")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = parser.parse_args()
    started = time.monotonic()
    with running_pushy() as server:
        report = run_fuzz(
            server,
            examples_per_operation=args.examples,
            stateful_examples=args.scenarios,
            stateful_steps=args.steps,
            seed=args.seed,
            deadline=started + args.seconds,
        )
    print(f"$ python3 benchmarks/fuzz_api.py {' '.join(sys.argv[1:])}")
    print(f"  {report.summary()}; {time.monotonic() - started:.0f} s")
    for line in report.failures:
        print(f"  FAILURE {line}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
