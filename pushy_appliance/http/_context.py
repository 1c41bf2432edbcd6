"""What the HTTP handlers need, handed to them explicitly (no globals)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .. import chef_auth
from ..config import ServerConfig
from ..db import Database
from ..model import IdentityModel

__all__ = ["KeyCache", "Services"]


class KeyCache:
    """Parsed public keys by PEM text, so a request does not parse PEM again.

    Bounded: the cache is cleared when it holds ``limit`` keys (keys are cheap to re-parse,
    and a steady state holds one key per principal).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._limit = limit

    def load(self, pems: tuple[str, ...]) -> list[rsa.RSAPublicKey]:
        out = []
        for pem in pems:
            key = self._keys.get(pem)
            if key is None:
                if len(self._keys) >= self._limit:
                    self._keys.clear()
                key = self._keys[pem] = chef_auth.load_public_key(pem)
            out.append(key)
        return out


@dataclasses.dataclass(slots=True)
class Services:
    """The engines and facts the handlers use.

    Attributes:
        config: the server configuration.
        db: the database (store and models).
        incarnation_id: this server process's UUID.
        started_at: ``trio.current_time()`` at start-up, for ``uptime_s``.
        server_public_pem: the server's public key, for ``config/NODE``.
        node_port: the node listener's port, for ``connect_url``; 0 until it is bound.
        node_scheme: ``wss`` or ``ws``.
        on_client_deleted: callbacks run after a client is deleted (closes its socket).
        nodes / jobs / hub: the node registry, job runner and event hub, when present.
        link: the node link (:class:`~..nodes.link.NodeLink`: node states, availability),
            when present.
        feeds: the feeds' publisher and org-feed logs (:class:`~..feeds.Feeds`), when present.
    """

    config: ServerConfig
    db: Database
    incarnation_id: str
    started_at: float
    server_public_pem: str = ""
    node_port: int = 0
    node_scheme: str = "wss"
    keys: KeyCache = dataclasses.field(default_factory=KeyCache)
    on_client_deleted: list[Callable[[str, str], Awaitable[None]]] = dataclasses.field(
        default_factory=list
    )
    nodes: Any = None
    jobs: Any = None
    hub: Any = None
    link: Any = None
    feeds: Any = None

    @property
    def identity(self) -> IdentityModel:
        model = self.db.models["identity"]
        assert isinstance(model, IdentityModel)
        return model
