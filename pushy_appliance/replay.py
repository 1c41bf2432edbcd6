"""Refusing an exact replay of a signed request that changes state, pure.

Chef's signature has no nonce: a captured signed ``POST jobs`` verifies again for as long as
its timestamp is inside the clock-skew window (:data:`chef_auth.MAX_CLOCK_SKEW`, 900 s
either way). :class:`ReplayGuard` remembers the signature of every accepted signed request
whose method changes state (anything but ``GET``, ``HEAD`` and ``OPTIONS``) until its
timestamp leaves that window, and refuses the same signature a second time.

Bounded. The guard holds at most ``capacity`` signatures (16-byte digests, about 200 bytes
each with their bookkeeping). A remembered signature is dropped once its request could no
longer pass the clock check anyway. When the guard is full of signatures that are all still
inside the window, it does not forget one silently, which would let that request be replayed:
it drops the signature that leaves the window first and raises a *floor* to that signature's
timestamp. From then on every state-changing request signed at or before the floor is
refused as possibly replayed, whether or not it was seen. The guard so stays exact about
what it accepts: no signature is ever accepted twice. The price of a flood (more than
``capacity`` state-changing requests within the window) is paid by requests signed earlier
than the newest forgotten one: a client whose clock runs behind the server's, or a request
delayed in flight, is refused and signs again. A client with a correct clock is refused only
when more than ``capacity`` requests arrive within the same second.

A legitimate client repeating the very same request (same principal, method, path and body)
within the same second produces the same signature, since the timestamp has one-second
resolution: the second one is refused too, and succeeds when signed again a second later.

Both refusals are 401 with Chef Server's list-form body, ``WWW-Authenticate`` and
``X-Pushy-Replay: refused`` (:data:`REFUSED_HEADER`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from typing import Final

from .chef_auth import MAX_CLOCK_SKEW, WWW_AUTHENTICATE
from .errors import AuthError

__all__ = ["REFUSED_HEADER", "SAFE_METHODS", "ReplayGuard", "ReplayStatistics", "changes_state"]

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: their requests may be repeated."""

REFUSED_HEADER: Final = ("X-Pushy-Replay", "refused")
"""Header of both refusals, so a client can tell them from a bad key and sign again (with a
later timestamp: the appliance's own client does, once or twice)."""
_HEADERS: Final = {"WWW-Authenticate": WWW_AUTHENTICATE, REFUSED_HEADER[0]: REFUSED_HEADER[1]}


def changes_state(method: str) -> bool:
    """Whether a request with ``method`` may change state (and so is accepted once)."""
    return method.upper() not in SAFE_METHODS


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayStatistics:
    """What the guard holds and what it refused.

    Attributes:
        entries: signatures remembered now.
        capacity: the most it remembers.
        floor: Unix time at or before which every signed state-changing request is refused
            (0 until the guard was first full).
        replays: exact replays refused.
        stale: requests refused because they were signed at or before the floor.
    """

    entries: int
    capacity: int
    floor: float
    replays: int
    stale: int


class ReplayGuard:
    """Remembers accepted signatures for the clock-skew window (module docstring).

    Args:
        capacity: the most signatures remembered (``auth.replay_cache``).
        window: seconds a timestamp stays acceptable after it was signed.
    """

    def __init__(self, capacity: int, window: float = MAX_CLOCK_SKEW) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._window = window
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[float, bytes]] = []
        """(time the signature leaves the window, digest), a heap."""
        self._floor = 0.0
        self._replays = 0
        self._stale = 0

    def check(self, user_id: str, signature: bytes, signed_at: float, now: float) -> None:
        """Accept a verified signature once, or refuse it.

        Call it only for a request whose signature verified and whose method changes state.

        Args:
            user_id: who signed (for the message).
            signature: the request's decoded signature.
            signed_at: its ``X-Ops-Timestamp`` as Unix time.
            now: the server's time as Unix time.

        Raises:
            AuthError: 401 when the signature was accepted before, or the request was signed
                at or before the floor.
        """
        self._forget_expired(now)
        digest = hashlib.blake2b(signature, digest_size=16).digest()
        if digest in self._seen:
            self._replays += 1
            raise AuthError(
                401,
                f"Replayed request of user or client '{user_id}': a signed request that "
                "changes state is accepted once (sign it again)",
                headers=dict(_HEADERS),
            )
        if signed_at > self._floor and len(self._seen) >= self._capacity:
            expires, oldest = heapq.heappop(self._expiry)
            self._seen.discard(oldest)
            self._floor = max(self._floor, expires - self._window)
        if signed_at <= self._floor:
            self._stale += 1
            raise AuthError(
                401,
                f"Request of user or client '{user_id}' is signed too long ago for the "
                "server's replay window now (sign it again)",
                headers=dict(_HEADERS),
            )
        self._seen.add(digest)
        heapq.heappush(self._expiry, (signed_at + self._window, digest))

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, digest = heapq.heappop(expiry)
            self._seen.discard(digest)

    def statistics(self) -> ReplayStatistics:
        """The guard's figures (see :class:`ReplayStatistics`)."""
        return ReplayStatistics(
            entries=len(self._seen),
            capacity=self._capacity,
            floor=self._floor,
            replays=self._replays,
            stale=self._stale,
        )
