"""The webhook engine's pool and its records (``webhooks/engine.py``), on the autojump clock:
the real engine, model and database on an in-memory store, with the network attempt replaced
by one the test releases (the attempt itself is tested for real in ``test_ops_e2e.py``).

- at most ``webhooks.per_receiver`` attempts are in flight to one receiver, even with
  workers to spare, and another receiver is served meanwhile;
- an attempt whose record the store refuses is neither made again nor lost: the delivery
  stays in flight until the record is stored, then ends ``delivered`` after one attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from test_engine_outage import Disk
from test_webhooks import Jobs, hook

from pushy_appliance.config import WebhooksConfig
from pushy_appliance.db import Database
from pushy_appliance.store import open_store
from pushy_appliance.webhooks.engine import DELIVERER_CHECK, Outcome, WebhookEngine
from pushy_appliance.webhooks.model import DELIVERED, Delivery, Webhook, WebhooksModel


class HeldEngine(WebhookEngine):
    """A webhook engine whose attempts wait until the test answers them."""

    def __init__(self, db: Database, config: WebhooksConfig) -> None:
        super().__init__(db, config, is_local=lambda a: False)
        self.gates: dict[str, trio.Event] = {}
        self.answers: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.made: list[str] = []

    async def attempt(self, d: Delivery, hook: Webhook, n: int) -> Outcome:
        receiver = hook.url
        self.made.append(d.id)
        self.in_flight[receiver] = self.in_flight.get(receiver, 0) + 1
        self.most[receiver] = max(self.most.get(receiver, 0), self.in_flight[receiver])
        try:
            await self.gates.setdefault(d.id, trio.Event()).wait()
        finally:
            self.in_flight[receiver] -= 1
        return Outcome(self.answers.get(d.id, 200), None, 1.0)

    def answer(self, did: str, status: int = 200) -> None:
        self.answers[did] = status
        self.gates.setdefault(did, trio.Event()).set()


def to(hook_id: str, org: str, url: str) -> dict[str, Any]:
    return {**hook(hook_id, org=org), "url": url}


def jobs_of(org: str, count: int, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(count):
        out += [
            {"t": "job.create", "id": f"{prefix}{i}", "org": org, "at": 5.0},
            {"t": "job.step", "id": f"{prefix}{i}", "at": 6.0, "close": True},
        ]
    return out


@asynccontextmanager
async def engine_over(
    records: list[dict[str, Any]], config: WebhooksConfig
) -> AsyncIterator[tuple[HeldEngine, Database]]:
    async with open_store(None) as store:
        jobs = Jobs()
        db = Database(store, {"jobs": jobs, "webhooks": WebhooksModel(jobs)})  # type: ignore[dict-item]
        for r in records:
            await db.commit(r)
        engine = HeldEngine(db, config)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            yield engine, db
            nursery.cancel_scope.cancel()


def pending_of(db: Database, hook_id: str) -> list[str]:
    model = db.models["webhooks"]
    assert isinstance(model, WebhooksModel)
    return sorted(did for did, d in model.pending.items() if d.webhook == hook_id)


async def test_one_receiver_holds_at_most_its_share_of_the_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, other = "https://slow.example.com/hook", "https://other.example.com/hook"
    records = [
        to("ws", "o1", slow),
        to("wo", "o2", other),
        *jobs_of("o1", 5, "s"),
        *jobs_of("o2", 1, "t"),
    ]
    config = WebhooksConfig(workers=4, per_receiver=2)
    async with engine_over(records, config) as (engine, db):
        to_slow, to_other = pending_of(db, "ws"), pending_of(db, "wo")
        assert (len(to_slow), len(to_other)) == (5, 1)
        await trio.sleep(1)
        # two workers idle, yet the slow receiver gets no third attempt; the other is served
        assert engine.in_flight == {slow: 2, other: 1}
        assert engine.statistics().in_flight == 3
        engine.answer(to_other[0])
        await trio.sleep(1)
        assert pending_of(db, "wo") == []
        assert engine.in_flight[slow] == 2
        # answering the slow receiver's attempts lets the next ones go, two at a time
        for did in to_slow:
            engine.answer(did)
        await trio.sleep(10)
        assert pending_of(db, "ws") == []
        assert engine.most == {slow: 2, other: 1}
        assert sorted(engine.made) == sorted(to_slow + to_other)


async def test_an_attempt_the_store_cannot_record_is_held_not_repeated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = "https://h.example.com/hook"
    records = [to("w1", "o1", url), *jobs_of("o1", 1, "j")]
    async with engine_over(records, WebhooksConfig()) as (engine, db):
        disk = Disk(db.store)
        [did] = pending_of(db, "w1")
        await trio.sleep(1)
        assert engine.made == [did]
        disk.full = True
        engine.answer(did, 200)
        await trio.sleep(600)  # ten minutes of a full disk, far beyond any retry delay
        # the receiver acknowledged, the record waits: not delivered yet, and not sent again
        assert engine.made == [did]
        assert pending_of(db, "w1") == [did]
        assert engine.statistics().in_flight == 1
        disk.full = False
        await trio.sleep(30)
        model = db.models["webhooks"]
        assert isinstance(model, WebhooksModel)
        d = model.webhooks["w1"].deliveries[did]
        assert (d.state, d.attempts) == (DELIVERED, 1)
        assert engine.made == [did]
        assert engine.statistics().in_flight == 0


async def test_only_the_cluster_s_deliverer_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    url = "https://h.example.com/hook"
    records = [to("w1", "o1", url), *jobs_of("o1", 1, "j")]
    async with open_store(None) as store:
        role = {"held": False}

        async def take_compactor() -> bool:
            await trio.lowlevel.checkpoint()
            return role["held"]

        store.take_compactor = take_compactor  # type: ignore[method-assign]
        jobs = Jobs()
        db = Database(store, {"jobs": jobs, "webhooks": WebhooksModel(jobs)})  # type: ignore[dict-item]
        for r in records:
            await db.commit(r)
        engine = HeldEngine(db, WebhooksConfig())
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            [did] = pending_of(db, "w1")
            engine.answer(did)
            # another appliance of the cluster holds the role: this one sends nothing
            await trio.sleep(10 * DELIVERER_CHECK)
            assert engine.made == []
            # its holder is gone and this appliance took it: sent within one check
            role["held"] = True
            await trio.sleep(DELIVERER_CHECK)
            assert engine.made == [did] and pending_of(db, "w1") == []
            nursery.cancel_scope.cancel()
