"""Schemathesis against a running appliance with real Chef signing (issue 12 §2), bounded for
CI (about a minute and a half on this 2-core machine): one ``pushy serve`` subprocess for the
whole run, every operation of the served OpenAPI document with generated valid and invalid
requests, then stateful scenarios along the document's links (start a job → get → abort;
start → output and feed; create a client → get → delete). No 5xx, every response as the
document says. The longer run is ``benchmarks/fuzz_api.py``; ``tests/apifuzz.py`` is the
runner both use."""

from __future__ import annotations

import time

from apifuzz import run_fuzz, running_pushy

EXAMPLES_PER_OPERATION = 30
STATEFUL_SCENARIOS = 15
STEPS_PER_SCENARIO = 10
SEED = 20_241_212
BUDGET = 240.0
"""Seconds after which no new operation or scenario starts (a loaded machine is slower)."""


def test_schemathesis_finds_nothing_against_a_running_appliance() -> None:
    with running_pushy() as server:
        report = run_fuzz(
            server,
            examples_per_operation=EXAMPLES_PER_OPERATION,
            stateful_examples=STATEFUL_SCENARIOS,
            stateful_steps=STEPS_PER_SCENARIO,
            seed=SEED,
            deadline=time.monotonic() + BUDGET,
        )
    assert report.failures == [], "\n".join(report.failures)
    # the cases reached the routes, not only their refusals
    assert {200, 201, 400, 404, 409} <= set(report.statuses), report.summary()
    assert report.cases >= 30 * EXAMPLES_PER_OPERATION
    assert report.stateful_steps > 0
