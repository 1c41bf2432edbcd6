"""What the adapters serve from: the engines and facts of one running appliance.

Built once, complete, by ``appliance.serve()`` after the engines are made and the node
listener is bound; the HTTP handlers get it explicitly (no globals).
"""

from __future__ import annotations

import dataclasses

from .audit.model import AuditModel
from .audit.recorder import AuditRecorder
from .auth import Authenticator
from .config import ServerConfig
from .db import Database
from .feeds import Feeds
from .hub import Hub
from .jobs.runner import JobRunner
from .model import IdentityModel
from .nodes.inventory import Inventory
from .nodes.link import NodeLink
from .nodes.registry import NodeRegistry
from .webhooks.model import WebhooksModel
from .websession import WebSessions

__all__ = ["Services"]


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """The engines and facts the handlers use.

    Attributes:
        config: the server configuration.
        db: the database (store and models).
        auth: request authentication and authorization over the identity model.
        nodes: the node registry (live sessions).
        link: the node link (node states, availability, the node↔job link).
        inventory: node facts and search over them.
        jobs: the job runner.
        hub: the event hub of the feeds.
        feeds: the feeds' publisher and the org feeds' logs.
        incarnation_id: this server process's UUID.
        started_at: ``trio.current_time()`` at start-up, for ``uptime_s``.
        server_public_pem: the server's public key, for ``config/NODE``.
        node_port: the node listener's bound port, for ``connect_url``.
        node_scheme: ``wss`` or ``ws``.
        web_sessions: the dashboard's login links and sessions.
        audit: the recorder of refusals (the audit entries no change carries).
    """

    config: ServerConfig
    db: Database
    auth: Authenticator
    nodes: NodeRegistry
    link: NodeLink
    inventory: Inventory
    jobs: JobRunner
    hub: Hub
    feeds: Feeds
    incarnation_id: str
    started_at: float
    server_public_pem: str
    node_port: int
    node_scheme: str
    web_sessions: WebSessions
    audit: AuditRecorder

    @property
    def identity(self) -> IdentityModel:
        """The identity model (the one :attr:`auth` answers from)."""
        return self.auth.identity

    @property
    def audit_log(self) -> AuditModel:
        """The stored audit entries."""
        model = self.db.models["audit"]
        assert isinstance(model, AuditModel)
        return model

    @property
    def webhooks(self) -> WebhooksModel:
        """The stored webhooks and their deliveries."""
        model = self.db.models["webhooks"]
        assert isinstance(model, WebhooksModel)
        return model
