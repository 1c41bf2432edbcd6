"""The one exception tree of the appliance.

Every error the appliance raises on purpose derives from :class:`PushyError`. Messages are
built from fields kept as attributes, so callers can act on the fields and the HTTP layer can
map the tree to status codes in one place (``http/_errors.py``)::

    PushyError
    ├── ConfigError              bad configuration file, environment variable or flag
    ├── KeyFormatError           a key (PEM) that cannot be read or used for signing
    ├── StoreError               the store cannot be opened, read or written
    │   ├── StoreCorruptError    a record failed its CRC or could not be decoded
    │   ├── DataDirBusyError     another process holds the data directory
    │   ├── StoreUnavailableError a write or fsync failed: writes refused until one succeeds
    │   └── StaleLeaseError      a job step fenced with a lease epoch another appliance took
    ├── ProtocolError            a node frame that is not what the protocol says
    │   └── FrameTooLargeError   a frame over the size cap
    ├── DomainError              what a model or engine refuses, whoever asked; no status code
    │   ├── NoSuchJobError       no job ``job_id`` (in that organization)
    │   ├── JobFinishedError     job ``job_id`` has already finished (abort)
    │   ├── JobCapacityError     a new job would pass the cap on live jobs or their nodes
    │   ├── NothingToRerunError  a re-run that would have no node
    │   ├── NoSuchWebhookError   no webhook ``webhook_id`` (in that organization)
    │   ├── WebhookLimitError    the organization has ``webhooks.max_per_org`` webhooks
    │   ├── NoSuchIdentityError  no organization, user, member, client, group or principal
    │   ├── IdentityExistsError  that organization, user, member, client or group exists
    │   └── FeedLimitError       no feed opened: a cap on open feeds is reached
    │       ├── TooManyFeedsError            the server's (``feeds.max_connections``)
    │       └── TooManyPrincipalFeedsError   the principal's (``feeds.max_per_principal``)
    ├── ApiError                 a request the API refuses: has ``status`` and ``body()``
    │   ├── ValidationError      400, ``{"error": "<message naming the field>"}``
    │   │   ├── SearchSyntaxError 400, ``{"error": ["invalid search query: … at position N"]}``
    │   │   └── SearchRequestError 400, list form: no node matches a job's search, a bad
    │   │                          parameter or body of Chef's search routes
    │   ├── AuthError            400/401/403/404 from signing checks, list-form body
    │   ├── NotFoundError        404
    │   ├── PayloadTooLargeError 413
    │   ├── NotAcceptableError   406
    │   ├── UnsupportedMediaError 415
    │   └── MethodNotAllowedError 405
    ├── AgentError               the node agent cannot go on (bad key, untrusted server, …)
    │   └── CommitRefused        a commit the agent nacks; ``reason`` is the wire reason
    └── ClientError              the CLI's view of a failed call
        ├── ServerUnreachableError
        ├── TLSUntrustedError    carries the server's fingerprint to pin
        └── ServerRefusedError   carries the HTTP status and the server's message

``trio.Cancelled`` is never caught and re-raised as one of these.
"""

from __future__ import annotations

from typing import Any


class PushyError(Exception):
    """Root of every error the appliance raises on purpose."""


class ConfigError(PushyError):
    """A configuration source holds something invalid.

    Attributes:
        source: where the value came from (a file path, ``environment`` or ``flags``).
        key: the dotted key, or ``None`` for errors about the source as a whole.
        reason: what is wrong.
    """

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")


class KeyFormatError(PushyError):
    """A key that cannot be read, or cannot be used for what was asked of it.

    Attributes:
        reason: what is wrong with the key (never the key material itself).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StoreError(PushyError):
    """The store cannot be opened, read or written."""


class StoreCorruptError(StoreError):
    """A record failed its CRC check or could not be decoded.

    Attributes:
        path: the segment or snapshot file.
        offset: byte offset of the bad record.
        reason: what failed.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path} at byte {offset}: {reason}")


class DataDirBusyError(StoreError):
    """Another process (a server, or an offline store tool) holds the data directory.

    Attributes:
        data_dir: the directory.
    """

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        super().__init__(f"{data_dir} is in use by another pushy process")


class StoreUnavailableError(StoreError):
    """The store refuses writes for now: a write or fsync failed (disk full, I/O error, the
    file size limit). Nothing of the refused call was stored or applied; reads go on; the
    store retries on its own and takes writes again once one succeeds. The HTTP API answers
    ``503 {"error": "store unavailable: <reason>"}``.

    Attributes:
        reason: what failed, without server paths (``No space left on device``).
        path: the file that could not be written, for the server's log (or ``None``).
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"store unavailable: {reason}")


class StaleLeaseError(StoreError):
    """A job's records were refused: they were fenced with a lease epoch that is no longer
    the job's (another appliance took the job over, ``docs/SCALE-OUT.md`` §4). Nothing of
    the refused call was stored; the appliance that sent it stops driving the job.

    Attributes:
        job_id: the job.
        epoch: the stale epoch the records carried.
    """

    def __init__(self, job_id: str, epoch: int) -> None:
        self.job_id = job_id
        self.epoch = epoch
        super().__init__(f"job {job_id}: lease epoch {epoch} is stale (taken over)")


class ProtocolError(PushyError):
    """A node frame that does not follow the node protocol.

    Attributes:
        reason: what was wrong with it.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FrameTooLargeError(ProtocolError):
    """A frame larger than the negotiated maximum (WebSocket close code 1009)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")


class DomainError(PushyError):
    """A lookup or change that a model or engine refuses, whoever asked.

    These carry no HTTP shape (status, body form): each adapter maps them, the HTTP API in
    one place (``http/_errors.py``).
    """


class NoSuchJobError(DomainError):
    """No job ``job_id`` (or none in the organization asked about).

    Attributes:
        job_id: the id as given (the message shows at most 64 characters of it).
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job '{job_id[:64]}' not found")


class JobFinishedError(DomainError):
    """The job has already finished, so it cannot be aborted.

    Attributes:
        job_id: the job.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__("job already finished")


class JobCapacityError(DomainError):
    """A new job would pass a cap on what live (unfinished) jobs hold: their number
    (``limits.max_live_jobs``) or their nodes together (``limits.max_live_job_nodes``).

    Attributes:
        what: ``live jobs`` or ``nodes in live jobs``.
        limit: the cap.
        current: how many there are (with the new job's, for nodes).
    """

    def __init__(self, what: str, limit: int, current: int) -> None:
        self.what = what
        self.limit = limit
        self.current = current
        super().__init__(
            f"too many {what} ({current}, at most {limit}): try again when a job has finished"
        )


class NothingToRerunError(DomainError):
    """A re-run of job ``job_id`` whose node selection is empty (no node ended that way).

    Attributes:
        job_id: the job to re-run.
        selection: the selection asked for (``failed``, ``unsuccessful``, ``all``).
    """

    def __init__(self, job_id: str, selection: str) -> None:
        self.job_id = job_id
        self.selection = selection
        super().__init__("no nodes to re-run")


class NoSuchWebhookError(DomainError):
    """No webhook ``webhook_id`` (or none in the organization asked about).

    Attributes:
        webhook_id: the id as given (the message shows at most 64 characters of it).
    """

    def __init__(self, webhook_id: str) -> None:
        self.webhook_id = webhook_id
        super().__init__(f"webhook '{webhook_id[:64]}' not found")


class WebhookLimitError(DomainError):
    """The organization has as many webhooks as ``webhooks.max_per_org`` allows.

    Attributes:
        org: the organization.
        limit: the most webhooks one organization may have.
    """

    def __init__(self, org: str, limit: int) -> None:
        self.org = org
        self.limit = limit
        super().__init__(f"organization '{org}' has {limit} webhooks, the most allowed")


class NoSuchIdentityError(DomainError):
    """The identity model has no such organization, user, member, client, group or principal.

    Attributes:
        kind: ``organization``, ``user``, ``member`` (a user of ``org``), ``client``,
            ``group`` or ``principal``.
        name: the name asked for.
        org: the organization asked about, or ``None`` for global names.
    """

    def __init__(self, kind: str, name: str, org: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.org = org
        if kind == "organization":
            message = f"organization '{name}' does not exist."
        elif kind == "member":
            message = f"user '{name}' is not a member of '{org}'"
        else:
            message = f"{kind} '{name}' not found"
        super().__init__(message)


class IdentityExistsError(DomainError):
    """The organization, user, member, client or group to create exists already.

    Attributes:
        kind: as for :class:`NoSuchIdentityError` (``principal`` excepted).
        name: the name.
        org: the organization, or ``None`` for global names.
        shared_name: the name is held by the other kind of principal of ``org`` (a user
            who signs requests there, or a client): users and clients share one name
            space per organization.
    """

    def __init__(
        self, kind: str, name: str, org: str | None = None, *, shared_name: bool = False
    ) -> None:
        self.kind = kind
        self.name = name
        self.org = org
        self.shared_name = shared_name
        if shared_name:
            message = (
                f"{kind} '{name}' already exists in organization '{org}' "
                "(users and clients share one name space per organization)"
            )
        elif kind == "member":
            message = f"user '{name}' is already a member of '{org}'"
        else:
            message = f"{kind} '{name}' already exists"
        super().__init__(message)


class FeedLimitError(DomainError):
    """A feed that is not opened because a cap on open feeds is reached.

    Attributes:
        key: the configuration key of the cap.
        limit: its value.
    """

    def __init__(self, key: str, limit: int, message: str) -> None:
        self.key = key
        self.limit = limit
        super().__init__(f"{message} ({key} = {limit}): close one, or try again later")


class TooManyFeedsError(FeedLimitError):
    """The server has ``feeds.max_connections`` feeds open."""

    def __init__(self, limit: int) -> None:
        super().__init__("feeds.max_connections", limit, "too many open feeds on this server")


class TooManyPrincipalFeedsError(FeedLimitError):
    """The principal has ``feeds.max_per_principal`` feeds open.

    Attributes:
        name: the principal.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        super().__init__("feeds.max_per_principal", limit, f"too many open feeds of '{name}'")


class ApiError(PushyError):
    """A request the HTTP API refuses. Subclasses fix ``status``.

    Attributes:
        status: the HTTP status code.
        message: the human-readable message.
        headers: extra response headers.
    """

    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The JSON body of the response."""
        return {"error": self.message}


class ValidationError(ApiError):
    """400 with the string-form body of the original server (``{"error": "..."}``)."""

    status = 400


class SearchSyntaxError(ValidationError):
    """A search query that does not parse, or that is over a limit.

    Raised by the pure query parser (``search``); the HTTP layer answers it like any
    :class:`ApiError`: 400 with Chef Server's list-form body.

    Attributes:
        reason: what is wrong, in a few words.
        position: the 0-based character offset in the query where it went wrong.
    """

    def __init__(self, reason: str, position: int) -> None:
        self.reason = reason
        self.position = position
        super().__init__(f"invalid search query: {reason} at position {position}")

    def body(self) -> dict[str, Any]:
        return {"error": [self.message]}


class SearchRequestError(ValidationError):
    """400 with Chef Server's list-form body: a search request that cannot be answered (no
    node matches a job's ``search``; on Chef's search routes, a bad ``start``, ``rows`` or
    partial-search body)."""

    def body(self) -> dict[str, Any]:
        return {"error": [self.message]}


class AuthError(ApiError):
    """An authentication or authorization refusal, with the list-form body of Chef Server."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": [self.message]}


class NotFoundError(ApiError):
    """404. ``list_form`` selects ``{"error": [msg]}`` (Chef Server style) over a string."""

    status = 404

    def __init__(self, message: str = "not found", *, list_form: bool = True) -> None:
        super().__init__(message)
        self.list_form = list_form

    def body(self) -> dict[str, Any]:
        return {"error": [self.message]} if self.list_form else {"error": self.message}


class PayloadTooLargeError(ApiError):
    """413: the body is over ``limits.max_body_bytes``."""

    status = 413

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"JSON must be no more than {limit} bytes.")


class NotAcceptableError(ApiError):
    """406: the ``Accept`` header excludes what the route produces."""

    status = 406

    def __init__(self, produces: str) -> None:
        self.produces = produces
        super().__init__(f"this resource produces {produces}")


class UnsupportedMediaError(ApiError):
    """415: a POST/PUT body whose ``Content-Type`` is not JSON."""

    status = 415

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        super().__init__(f"Content-Type must be application/json, not {content_type!r}")


class MethodNotAllowedError(ApiError):
    """405 with an ``Allow`` header."""

    status = 405

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        super().__init__("method not allowed", headers={"Allow": ", ".join(allowed)})

    def body(self) -> dict[str, Any]:
        return {"error": [self.message]}


class AgentError(PushyError):
    """The node agent cannot go on (bad key, untrusted server, refused connection)."""


class CommitRefused(AgentError):
    """A commit the agent refuses. ``reason`` is the wire reason of ``nack_commit``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ClientError(PushyError):
    """A CLI call that failed; the CLI turns these into messages and exit codes."""


class ServerUnreachableError(ClientError):
    """The server could not be reached at all."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach {url}: {reason}")


class TLSUntrustedError(ClientError):
    """The server's certificate is not trusted; ``fingerprint`` is what to pin."""

    def __init__(self, url: str, fingerprint: str | None, reason: str) -> None:
        self.url = url
        self.fingerprint = fingerprint
        self.reason = reason
        hint = (
            f" (server fingerprint {fingerprint}; pin it with --fingerprint)" if fingerprint else ""
        )
        super().__init__(f"TLS certificate of {url} is not trusted: {reason}{hint}")


class ServerRefusedError(ClientError):
    """The server answered with an error status.

    Attributes:
        status: HTTP status code.
        message: the server's error message, flattened to one string.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"server refused the request ({status}): {message}")
