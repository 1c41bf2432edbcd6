"""The webhook engine: sends queued deliveries with a bounded pool and stores each attempt.

The queue is the webhooks model's (:mod:`.model`): durable, fed by the jobs' own records,
resumed as it stands after a restart. This engine only sends:

* **A bounded pool.** At most ``webhooks.workers`` deliveries are in flight, at most
  ``webhooks.per_receiver`` of them to one receiver (host and port). Due deliveries wait
  in one queue per receiver, and the pool takes from the receivers in turn, so a slow or
  dead receiver holds at most its own share of the pool, each attempt for at most
  ``webhooks.timeout`` seconds (name resolution, connection, TLS, request and the
  response's status line together), and never the job engine or the feeds, which do not
  wait for it at all.
* **One attempt**: the job's payload (:func:`.rules.payload`, from the jobs model), signed
  with the webhook's secret; the host resolved now and every address it resolves to
  checked (:class:`.rules.AddressPolicy`; a name that resolves elsewhere since is checked
  again), then the connection made to the checked address itself, the ``Host`` header and
  the TLS server name (SNI, and the certificate check) being the URL's host: nothing
  resolves the name a second time. Redirects are not followed (a 3xx is a failed attempt),
  no proxy of the environment is used, and no connection is kept for another request
  (another name may share the address).
* **Its record.** A 2xx is ``delivered``; anything else (a status, a refusal of the address
  policy, no answer in time, a connection error) is tried again later
  (:func:`.rules.next_attempt`) or ends ``failed``; a job purged meanwhile ends the
  delivery ``dropped``. The ``webhook.attempt`` record is committed (waiting out a store
  outage) before the delivery can be taken again.

* **One deliverer in a cluster.** Appliances sharing one PostgreSQL log all hold the same
  queue; only the one holding the store's compactor role (``Store.take_compactor``: the
  appliance that snapshots the log) sends, the others check every
  :data:`DELIVERER_CHECK` seconds whether they hold it now (its holder died). On the file
  store the appliance is always the one.

The requests carry ``Content-Type: application/json``, ``User-Agent: pushy-appliance/V``,
``X-Pushy-Event``, ``X-Pushy-Delivery`` (the delivery id, the same on every attempt),
``X-Pushy-Attempt`` (1, 2, …) and ``X-Pushy-Signature`` (:func:`.rules.signature`).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import trio

from .. import __version__
from ..config import WebhooksConfig
from ..db import Database
from ..errors import ValidationError
from .model import DELIVERED, DROPPED, FAILED, PENDING, Delivery, Webhook, WebhooksModel
from .model import attempt_record as make_attempt_record
from .rules import (
    JOB_COMPLETE,
    AddressPolicy,
    Target,
    encode_payload,
    next_attempt,
    parse_url,
    payload,
    signature,
)

__all__ = ["DELIVERER_CHECK", "EngineStatistics", "Outcome", "WebhookEngine", "is_local_address"]

log = logging.getLogger(__name__)

DELIVERER_CHECK = 15.0
"""Seconds between two checks of whether this appliance is the cluster's deliverer."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: the HTTP ``status`` or the ``error`` that stood in its
    way, how long it took, and whether the delivery is moot (``dropped``: its job is gone)."""

    status: int | None
    error: str | None
    ms: float
    dropped: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclasses.dataclass(frozen=True, slots=True)
class EngineStatistics:
    in_flight: int
    waiting: int
    attempts: int
    delivered: int


def is_local_address(address: str) -> bool:
    """Whether ``address`` is one of this host's own (it can be bound to)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


class WebhookEngine:
    """Sends the webhooks model's pending deliveries.

    Args:
        db: the database; its ``webhooks`` model is a :class:`~.model.WebhooksModel` (whose
            ``jobs`` the payloads are made from).
        config: ``webhooks.*``.
        own_ports: the ports of the appliance's listeners (never delivered to locally).
        now: the wall clock of attempts and retries (seconds since the epoch).
        is_local: whether an address is one of this host's (the address policy's question).
    """

    def __init__(
        self,
        db: Database,
        config: WebhooksConfig,
        *,
        own_ports: tuple[int, ...] = (),
        now: Callable[[], float] = time.time,
        is_local: Callable[[str], bool] = is_local_address,
    ) -> None:
        self.db = db
        self.config = config
        self.policy = AddressPolicy.from_config(config.allow, own_ports)
        self._now = now
        self._is_local = is_local
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._ready: dict[tuple[str, int], deque[str]] = {}
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._busy: dict[tuple[str, int], int] = {}
        self._wakeup = trio.Event()
        self._http: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self.attempts = 0
        self.delivered = 0

    @property
    def model(self) -> WebhooksModel:
        model = self.db.models["webhooks"]
        assert isinstance(model, WebhooksModel)
        return model

    def statistics(self) -> EngineStatistics:
        waiting = len(self._queued) + len(self._heap)
        return EngineStatistics(len(self._in_flight), waiting, self.attempts, self.delivered)

    def _ssl_context(self) -> ssl.SSLContext:
        if self.config.ca_file:
            return ssl.create_default_context(cafile=self.config.ca_file)
        return ssl.create_default_context()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send deliveries until cancelled, the ones the store holds first.

        Start-up: ready once every pending delivery of the store is scheduled.

        Cancellation: attempts in flight are abandoned unrecorded; they are made again
        after a restart (at least once).
        """
        model = self.model
        http = httpx.AsyncClient(
            verify=self._ssl_context(),
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=httpx.Timeout(self.config.timeout),
        )
        async with http, trio.open_nursery() as nursery:
            self._http = http
            self._nursery = nursery
            model.listener = self._schedule
            try:
                for d in model.due():
                    self._schedule(d)
                task_status.started()
                await self._dispatch()
            finally:
                model.listener = None

    def _schedule(self, d: Delivery) -> None:
        """The model's listener: ``d`` is due at ``d.next_at``."""
        heapq.heappush(self._heap, (d.next_at, next(self._order), d.id))
        self._wakeup.set()

    async def _dispatch(self) -> None:
        deliverer_until = -math.inf
        while True:
            if trio.current_time() >= deliverer_until:
                if not await self.db.store.take_compactor():
                    await trio.sleep(DELIVERER_CHECK)
                    continue
                deliverer_until = trio.current_time() + DELIVERER_CHECK
            now = self._now()
            self._promote(now)
            self._start_ready()
            wait = self._heap[0][0] - now if self._heap else math.inf
            with trio.move_on_after(max(0.0, wait)):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    def _promote(self, now: float) -> None:
        """Due deliveries from the time heap to their receiver's queue."""
        model = self.model
        while self._heap and self._heap[0][0] <= now:
            at, _, did = heapq.heappop(self._heap)
            d = model.pending.get(did)
            if d is None or d.next_at != at or did in self._queued or did in self._in_flight:
                continue  # done, rescheduled, or already on its way
            hook = model.webhooks.get(d.webhook)
            if hook is None:
                continue
            self._ready.setdefault(_receiver(hook), deque()).append(did)
            self._queued.add(did)

    def _start_ready(self) -> None:
        """Start attempts, taking from the receivers in turn, within the pool's bounds."""
        model = self.model
        workers, share = self.config.workers, self.config.per_receiver
        started = True
        while started and len(self._in_flight) < workers:
            started = False
            for receiver in list(self._ready):
                if len(self._in_flight) >= workers:
                    return
                if self._busy.get(receiver, 0) >= share:
                    continue
                waiting = self._ready[receiver]
                while waiting:
                    did = waiting.popleft()
                    self._queued.discard(did)
                    d = model.pending.get(did)
                    hook = None if d is None else model.webhooks.get(d.webhook)
                    if d is not None and hook is not None:
                        self._start(d, hook, receiver)
                        started = True
                        break
                if not waiting:
                    del self._ready[receiver]

    def _start(self, d: Delivery, hook: Webhook, receiver: tuple[str, int]) -> None:
        self._in_flight.add(d.id)
        self._busy[receiver] = self._busy.get(receiver, 0) + 1
        assert self._nursery is not None
        self._nursery.start_soon(self._attempt, d, hook, receiver)

    async def _attempt(self, d: Delivery, hook: Webhook, receiver: tuple[str, int]) -> None:
        try:
            n = d.attempts + 1
            outcome = await self.attempt(d, hook, n)
            self.attempts += 1
            now = self._now()
            next_at = None
            if outcome.dropped:
                state = DROPPED
            elif outcome.acknowledged:
                state = DELIVERED
                self.delivered += 1
            else:
                c = self.config
                next_at = next_attempt(
                    n,
                    d.enqueued_at,
                    now,
                    initial=c.retry_initial,
                    maximum=c.retry_max_interval,
                    give_up_after=c.retry_for,
                )
                state = PENDING if next_at is not None else FAILED
            log.info(
                "webhook %s: delivery %s (%s of job %s) attempt %d: %s, %s",
                hook.id,
                d.id,
                d.event,
                d.job,
                n,
                outcome.status if outcome.status is not None else outcome.error,
                state,
            )
            record = make_attempt_record(
                d.id,
                at=now,
                n=n,
                status=outcome.status,
                error=outcome.error,
                ms=outcome.ms,
                state=state,
                next_at=next_at,
            )
            await self.db.commit_retrying(record)
        finally:
            self._in_flight.discard(d.id)
            self._busy[receiver] -= 1
            if not self._busy[receiver]:
                del self._busy[receiver]
            self._wakeup.set()

    async def attempt(self, d: Delivery, hook: Webhook, n: int) -> Outcome:
        """Send delivery ``d`` of ``hook`` once (its ``n``-th attempt); record nothing."""
        started = trio.current_time()

        def took() -> float:
            return round((trio.current_time() - started) * 1000.0, 1)

        entry = self.model.jobs.jobs.get(d.job)
        if entry is None:
            return Outcome(None, "the job was purged", took(), dropped=True)
        ended_at = entry.finished_at if d.event == JOB_COMPLETE else None
        body = encode_payload(
            payload(entry, d.event, d.id, ended_at), self.config.max_payload_bytes
        )
        try:
            target = parse_url(hook.url, allow_http=hook.org in self.config.allow_http_orgs)
        except ValidationError as e:
            return Outcome(None, e.message, took())
        headers = {
            "Host": target.authority,
            "Content-Type": "application/json",
            "User-Agent": f"pushy-appliance/{__version__}",
            "X-Pushy-Event": d.event,
            "X-Pushy-Delivery": d.id,
            "X-Pushy-Attempt": str(n),
            "X-Pushy-Signature": signature(hook.secret, body),
        }
        status: int | None = None
        error: str | None = None
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                address, error = await self._address(target)
                if address is not None:
                    status = await self._post(target, address, headers, body)
            except OSError as e:
                error = f"cannot resolve {target.host}: {e.strerror or e}"
            except httpx.HTTPError as e:
                error = _describe(e, target)
        if scope.cancelled_caught:
            error = f"no answer within {self.config.timeout:g} s"
        elif status is not None and 300 <= status < 400:
            error = "redirect not followed"
        return Outcome(status, error, took())

    async def _address(self, target: Target) -> tuple[str | None, str | None]:
        """The address to connect to, or why there is none: every address the host resolves
        to must pass the policy (the first is used).

        Raises:
            OSError: the host does not resolve.
        """
        infos = await trio.socket.getaddrinfo(
            target.host, target.port, type=trio.socket.SOCK_STREAM
        )
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise OSError(f"no address for {target.host}")
        for address in addresses:
            why = self.policy.refusal(
                target.host, target.port, address, local=self._is_local(address)
            )
            if why is not None:
                return None, f"refused: {why}"
        return addresses[0], None

    async def _post(
        self, target: Target, address: str, headers: dict[str, str], body: bytes
    ) -> int:
        assert self._http is not None
        shown = f"[{address}]" if ":" in address else address
        url = f"{target.scheme}://{shown}:{target.port}{target.path}"
        extensions: dict[str, Any] = {}
        if target.scheme == "https" and target.host != address:
            extensions["sni_hostname"] = target.host
        extensions["timeout"] = httpx.Timeout(self.config.timeout).as_dict()
        request = httpx.Request(
            "POST",
            url,
            headers={**headers, "Content-Length": str(len(body))},
            stream=_Body(body),
            extensions=extensions,
        )
        response = await self._http.send(request, stream=True)
        await response.aclose()  # only the status counts
        return response.status_code


class _Body(httpx.AsyncByteStream):
    """A request body in one piece, read through a plain iterator: an attempt cancelled in
    the middle (its timeout, a shutdown) leaves no half-read async generator behind (httpx's
    own ``bytes`` stream is one, and warns when collected)."""

    def __init__(self, data: bytes) -> None:
        self._chunks = [data]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop()


def _receiver(hook: Webhook) -> tuple[str, int]:
    try:
        return parse_url(hook.url, allow_http=True).receiver
    except ValidationError:
        return (hook.url, 0)


def _describe(e: httpx.HTTPError, target: Target) -> str:
    """An HTTP error in a few words, without the URL's path (it may be a credential); the
    cause's words when the error has none (a refused certificate)."""
    cause: BaseException | None = e
    text = ""
    while cause is not None and not text:
        text = str(cause)
        cause = cause.__cause__ or cause.__context__
    if target.path != "/":
        text = text.replace(target.path, "/…")
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__
