"""The event hub (non-blocking fan-out with lag cut-off) and the org feed's event log."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from pushy_appliance.hub import (
    WAKE_BATCH,
    Hub,
    HubStatistics,
    OrgEvent,
    OrgEventLog,
    Subscription,
    org_event_id,
)

# Every test that could hang on a bug runs under an absolute deadline.
DEADLINE = 10.0


def drain(sub: Subscription) -> list[Any]:
    """Everything buffered in ``sub`` right now."""
    items = []
    while True:
        try:
            items.append(sub.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return items


# --- Hub: delivery ----------------------------------------------------------------------


def test_items_arrive_in_publish_order() -> None:
    hub = Hub(buffer=100)
    with hub.subscribe("job:1") as sub:
        for i in range(50):
            hub.publish("job:1", i)
        assert drain(sub) == list(range(50))
        with pytest.raises(trio.WouldBlock):
            sub.receive_nowait()


def test_topics_are_separate_and_late_subscribers_see_only_later_items() -> None:
    hub = Hub()
    with hub.subscribe("a") as a:
        hub.publish("a", "a1")
        hub.publish("b", "b1")
        with hub.subscribe("a") as late, hub.subscribe("b") as b:
            hub.publish("a", "a2")
            hub.publish("b", "b2")
            assert drain(a) == ["a1", "a2"]
            assert drain(late) == ["a2"]
            assert drain(b) == ["b2"]


def test_many_subscribers_all_receive_everything() -> None:
    hub = Hub(buffer=64)
    subs = [hub.subscribe("org:acme") for _ in range(1000)]
    assert hub.statistics() == HubStatistics(
        subscribers=1000, topics=1, published=0, lagged_disconnects=0
    )
    items = [object() for _ in range(64)]
    for item in items:
        hub.publish("org:acme", item)
    for sub in subs:
        got = drain(sub)
        assert len(got) == len(items)
        assert all(g is i for g, i in zip(got, items, strict=True))
        sub.close()
    assert hub.statistics() == HubStatistics(
        subscribers=0, topics=0, published=64, lagged_disconnects=0
    )


async def test_async_iteration_wakes_on_publish_and_ends_on_close_topic() -> None:
    hub = Hub()
    received: list[int] = []
    ended = trio.Event()

    async def reader(task_status: trio.TaskStatus[None]) -> None:
        with hub.subscribe("job:1") as sub:
            task_status.started()
            async for item in sub:
                received.append(item)
            assert not sub.lagged
        ended.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(reader)
            await trio.testing.wait_all_tasks_blocked()
            hub.publish("job:1", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert received == [1]
            hub.publish("job:1", 2)
            hub.publish("job:1", 3)
            hub.close_topic("job:1")
            # Closing the topic detaches at once; the reader still drains what it has.
            assert hub.statistics().subscribers == 0
            await ended.wait()
    assert received == [1, 2, 3]
    assert hub.statistics().topics == 0


# --- Hub: release -----------------------------------------------------------------------


def test_subscription_released_on_exit_even_with_an_error() -> None:
    hub = Hub()
    with pytest.raises(KeyError), hub.subscribe("t") as sub:
        assert hub.statistics().subscribers == 1
        raise KeyError("boom")
    assert hub.statistics().subscribers == 0
    assert hub.statistics().topics == 0
    hub.publish("t", "nobody listens")
    with pytest.raises(trio.ClosedResourceError):
        sub.receive_nowait()
    sub.close()  # idempotent
    assert hub.statistics().subscribers == 0


async def test_subscription_released_when_reader_is_cancelled() -> None:
    hub = Hub()

    async def reader(task_status: trio.TaskStatus[None]) -> None:
        with hub.subscribe("org:acme") as sub:
            task_status.started()
            async for _ in sub:
                pass

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                await nursery.start(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.statistics().subscribers == 3
            hub.publish("org:acme", "x")
            await trio.testing.wait_all_tasks_blocked()
            # The client went away: the handler's scope is cancelled mid-receive.
            nursery.cancel_scope.cancel()
    assert hub.statistics() == HubStatistics(
        subscribers=0, topics=0, published=1, lagged_disconnects=0
    )


async def test_close_wakes_a_blocked_receiver() -> None:
    hub = Hub()
    sub = hub.subscribe("t")
    outcome: list[str] = []

    async def reader() -> None:
        try:
            await sub.receive()
        except trio.ClosedResourceError:
            outcome.append("closed")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert outcome == ["closed"]
    assert hub.statistics().subscribers == 0


async def test_cancelled_receive_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    hub = Hub()
    keepalives = 0
    # Virtual time: the deadline must cover the three 15 s waits.
    with trio.fail_after(60), hub.subscribe("t") as sub:
        # The feed handler's keep-alive loop: wait up to 15 s for an item.
        for _ in range(3):
            with trio.move_on_after(15):
                await sub.receive()
                pytest.fail("nothing was published")
            keepalives += 1
        hub.publish("t", "after silence")
        assert await sub.receive() == "after silence"
    assert keepalives == 3
    assert trio.current_time() == pytest.approx(45)


async def test_receive_checkpoints_even_when_an_item_is_ready() -> None:
    hub = Hub()
    with hub.subscribe("t") as sub:
        hub.publish("t", 1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await sub.receive()
        assert scope.cancelled_caught
        assert sub.receive_nowait() == 1


# --- Hub: lag ---------------------------------------------------------------------------


async def test_stalled_subscriber_is_cut_off_while_others_get_everything() -> None:
    buffer = 4
    hub = Hub(buffer=buffer)
    fast_got: list[int] = []

    async def fast_reader(task_status: trio.TaskStatus[None]) -> None:
        with hub.subscribe("org:acme") as sub:
            task_status.started()
            async for item in sub:
                fast_got.append(item)
            assert not sub.lagged

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(fast_reader)
            with hub.subscribe("org:acme") as stalled:
                for i in range(20):
                    # publish is synchronous: returning at all proves it did not wait.
                    hub.publish("org:acme", i)
                    assert stalled.attached == (i < buffer)
                    await trio.testing.wait_all_tasks_blocked()
                assert hub.statistics() == HubStatistics(
                    subscribers=1, topics=1, published=20, lagged_disconnects=1
                )
                # The stalled reader gets what was buffered, then the end, flagged as lag.
                got = [item async for item in stalled]
                assert got == list(range(buffer))
                assert stalled.lagged
                with pytest.raises(trio.EndOfChannel):
                    stalled.receive_nowait()
            hub.close_topic("org:acme")
    assert fast_got == list(range(20))
    assert hub.statistics().subscribers == 0


def test_burst_beyond_buffer_cuts_off_every_unread_subscriber() -> None:
    hub = Hub(buffer=3)
    readers = [hub.subscribe("t") for _ in range(5)]
    drained = hub.subscribe("t")
    for i in range(3):
        hub.publish("t", i)
    assert drain(drained) == [0, 1, 2]
    for i in range(3, 9):
        hub.publish("t", i)
        if i < 6:
            assert drain(drained) == [i]
    stats = hub.statistics()
    assert stats.lagged_disconnects == 5
    assert stats.subscribers == 1
    for sub in readers:
        assert sub.lagged
        assert drain(sub) == [0, 1, 2]
        with pytest.raises(trio.EndOfChannel):
            sub.receive_nowait()
        sub.close()
    assert not drained.lagged
    hub.publish("t", 9)
    # Its buffer was full with 6, 7, 8, so 9 cut it off; it still gets those three.
    assert drained.lagged
    assert drain(drained) == [6, 7, 8]
    assert hub.statistics() == HubStatistics(
        subscribers=0, topics=0, published=10, lagged_disconnects=6
    )


def test_a_subscriber_is_cut_off_by_the_bytes_it_holds(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub(buffer=100, max_bytes=1000)
    stalled = [hub.subscribe("job:1") for _ in range(3)]
    reader = hub.subscribe("job:1")
    other = hub.subscribe("job:2")
    hub.publish("job:1", "a", size=600)
    hub.publish("job:2", "big", size=5000)  # alone in an empty buffer: taken, however large
    assert [s.buffered_bytes for s in stalled] == [600, 600, 600]
    assert drain(reader) == ["a"] and reader.buffered_bytes == 0
    assert other.attached and other.buffered_bytes == 5000
    hub.publish("job:1", "b", size=400)  # 1000 bytes: at the limit, not over it
    assert all(s.attached for s in stalled)
    assert drain(reader) == ["b"]
    hub.publish("job:1", "c", size=1)  # over it: every stalled one is cut off, at once
    assert [s.lagged for s in stalled] == [True, True, True]
    assert drain(reader) == ["c"] and not reader.lagged
    assert drain(stalled[0]) == ["a", "b"]
    assert stalled[0].buffered_bytes == 0
    # one line for the three of them, naming both limits
    cut = [r.getMessage() for r in caplog.records if "fell behind" in r.getMessage()]
    assert cut == [
        "3 feed subscriber(s) on job:1 fell behind and were disconnected "
        "(feeds.subscriber_buffer = 100 events, feeds.subscriber_bytes = 1000 bytes)"
    ]
    assert hub.has_subscribers("job:1") and not hub.has_subscribers("job:3")


def test_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Hub(buffer=0)
    with pytest.raises(ValueError, match="at least 1"):
        Hub(max_bytes=0)


# --- OrgEventLog ------------------------------------------------------------------------


def make_log(times: list[float], retention: float = 60.0) -> OrgEventLog:
    """One event per record, records 1, 2, …: ids ``oid(1)``, ``oid(2)``, …"""
    log = OrgEventLog(retention)
    for n, t in enumerate(times, start=1):
        log.append("start", {"timestamp": f"t{n}", "job": f"job{n}"}, t, seq=n, index=0)
    return log


def oid(seq: int, index: int = 0) -> str:
    """The id of the org event of record ``seq`` with index ``index`` in it."""
    return f"org-{seq * 2**32 + index}"


def ids(events: list[OrgEvent]) -> list[str]:
    return [e.id for e in events]


def test_org_ids_are_the_record_s_seq_and_the_event_s_index_in_it() -> None:
    log = OrgEventLog(60.0)
    assert (log.last_id, log.last_order) == (None, 0)
    first = log.append("start", {"timestamp": "t", "job": "j"}, 0.0, seq=7, index=0)
    # one record (a batch) may hold several jobs' events
    second = log.append("job_complete", {"timestamp": "u", "job": "j"}, 1.0, seq=7, index=1)
    third = log.append("start", {"timestamp": "v", "job": "k"}, 1.0, seq=9, index=0)
    assert (first.id, second.id, third.id) == (oid(7), oid(7, 1), oid(9))
    assert first.order < second.order < third.order == log.last_order
    assert [org_event_id(e.order) for e in (first, second, third)] == ids(log.events(1.0))
    assert log.last_id == oid(9)
    assert second.encode() == (
        f'event: job_complete\nid: {oid(7, 1)}\ndata: {{"timestamp":"u","job":"j"}}\n\n'.encode()
    )
    assert ids(log.after(oid(7), 1.0)[1]) == [oid(7, 1), oid(9)]
    assert ids(log.after(oid(7, 1), 1.0)[1]) == [oid(9)]
    # ids never issued, between and around those that were, are unknown
    for unknown in (oid(7, 2), oid(8), oid(6), oid(10)):
        assert log.after(unknown, 1.0)[0], unknown
    # the log only grows
    for seq, index in ((9, 0), (8, 5), (0, 0)):
        with pytest.raises(ValueError):
            log.append("start", {"timestamp": "w", "job": "l"}, 1.0, seq=seq, index=index)
    assert log.last_id == oid(9)


def test_org_no_last_event_id_means_live_only() -> None:
    log = make_log([0.0, 1.0, 2.0])
    assert log.after(None, 3.0) == (False, [])


def test_org_known_id_gives_the_retained_events_after_it() -> None:
    log = make_log([0.0, 1.0, 2.0, 3.0])
    start_of_history, events = log.after(oid(2), 4.0)
    assert not start_of_history
    assert ids(events) == [oid(3), oid(4)]
    assert events[0].data == {"timestamp": "t3", "job": "job3"}
    assert log.after(oid(4), 4.0) == (False, [])


@pytest.mark.parametrize(
    "bad",
    # org-2: seq 0 is never a record's; org-2.0: the form is one number
    [oid(99), oid(5), "org-0", "org-2", "org-2.0", "org-", "org-02", oid(2) + "0", "job-2", "x"],
)
def test_org_unknown_id_gives_start_of_history_and_everything(bad: str) -> None:
    log = make_log([0.0, 1.0, 2.0, 3.0])
    start_of_history, events = log.after(bad, 4.0)
    assert start_of_history
    assert ids(events) == [oid(1), oid(2), oid(3), oid(4)]


def test_org_expired_id_gives_start_of_history_and_what_is_left() -> None:
    log = make_log([0.0, 10.0, 50.0, 70.0], retention=60.0)
    # At 75 the events of 0 and 10 are more than 60 s old.
    start_of_history, events = log.after(oid(1), 75.0)
    assert start_of_history
    assert ids(events) == [oid(3), oid(4)]
    assert log.after(oid(2), 75.0) == (True, events)
    assert ids(log.after(oid(3), 75.0)[1]) == [oid(4)]
    assert not log.after(oid(3), 75.0)[0]


def test_org_expiry_boundary_and_empty_log() -> None:
    log = make_log([100.0], retention=60.0)
    assert log.after(oid(1), 160.0) == (False, [])  # exactly 60 s old: still retained
    assert log.after(oid(1), 160.5) == (True, [])  # expired, nothing left
    assert log.events(160.5) == []
    nxt = log.append("start", {"timestamp": "t", "job": "j"}, 161.0, seq=2, index=0)
    assert nxt.id == oid(2)
    assert log.last_id == oid(2)
    assert ids(log.after(oid(2), 161.0)[1]) == []


def test_org_log_is_capped() -> None:
    log = OrgEventLog(3600.0, max_events=3)
    for t in range(5):
        log.append("start", {"timestamp": str(t), "job": str(t)}, float(t), seq=t + 1, index=0)
    assert ids(log.events(5.0)) == [oid(3), oid(4), oid(5)]
    assert log.after(oid(2), 5.0)[0]
    assert log.after(oid(3), 5.0) == (False, log.events(5.0)[1:])


def test_org_log_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="negative"):
        OrgEventLog(-1.0)
    with pytest.raises(ValueError, match="at least 1"):
        OrgEventLog(1.0, max_events=0)


# --- Hub: shutdown --------------------------------------------------------------------------


async def test_close_all_ends_every_reader_normally_and_later_ones_are_born_detached() -> None:
    hub = Hub(buffer=4)
    ended: list[tuple[str, list[Any], bool]] = []

    async def reader(topic: str, task_status: trio.TaskStatus[None]) -> None:
        with hub.subscribe(topic) as sub:
            task_status.started()
            got = [item async for item in sub]
            ended.append((topic, got, sub.lagged))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for topic in ("job:1", "job:2", "org:o"):
                await nursery.start(reader, topic)
            hub.publish("job:1", "a")
            hub.publish("org:o", "b")
            assert not hub.closed
            hub.close_all()
            hub.close_all()  # idempotent
            assert hub.closed
        assert sorted(ended) == [
            ("job:1", ["a"], False),
            ("job:2", [], False),
            ("org:o", ["b"], False),
        ]
        assert hub.statistics().subscribers == 0
        assert hub.statistics().topics == 0
        with hub.subscribe("job:3") as late:
            assert not late.attached and not late.lagged
            hub.publish("job:3", "never seen")
            assert [item async for item in late] == []
        assert hub.statistics().subscribers == 0


async def test_with_run_the_readers_of_an_item_are_woken_a_group_at_a_time() -> None:
    """A thousand feeds woken by one event do not all run in one turn of the event loop."""
    hub = Hub()
    readers = 4 * WAKE_BATCH
    received = 0

    async def reader(task_status: trio.TaskStatus[None]) -> None:
        nonlocal received
        with hub.subscribe("job:1") as sub:
            task_status.started()
            await sub.receive()
            received += 1

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            for _ in range(readers):
                await nursery.start(reader)
            await trio.testing.wait_all_tasks_blocked()
            hub.publish("job:1", "event")
            # between two turns of this task, one group (or parts of two) ran
            progress = []
            while received < readers:
                before = received
                await trio.lowlevel.checkpoint()
                progress.append(received - before)
            assert max(progress) <= 2 * WAKE_BATCH
            assert sum(1 for p in progress if p) >= readers // (2 * WAKE_BATCH)
            nursery.cancel_scope.cancel()
