"""What travels in a ``pushy_mail`` row (``docs/SCALE-OUT.md`` §5), pure.

A row's ``payload`` is one msgpack list of items, each a list tagged by its first element:

* ``["frame", org, node, type, fields]``: a frame a job's driver sends a node connected to
  the receiving appliance (``commit``, ``run``, ``abort``, ``result_ack``); ``type`` is the
  frame's ``type`` tag and ``fields`` its fields without ``type``, ``seq`` and ``ts``, which
  the receiver gives it on the node's connection.
* ``["event", org, job_id, kind, fields]``: a node's event (``jobs.events``) for a job the
  receiving appliance drives; ``kind`` is the event class's name, ``fields`` its fields (a
  ``NodeBack``'s ``result`` as a nested ``Result`` map).
* ``["abort", org, job_id, "", {}]``: an operator's abort, asked of another appliance, of a
  job the receiving appliance drives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import msgpack

from ..errors import ProtocolError
from ..jobs.events import (
    AckCommit,
    AckRun,
    NackCommit,
    NackRun,
    NodeAborted,
    NodeBack,
    NodeDown,
    NodeEvent,
    Output,
    Result,
)

__all__ = [
    "AbortItem",
    "EventItem",
    "FrameItem",
    "MailItem",
    "decode_mail",
    "encode_mail",
    "event_fields",
]

_EVENTS: Final[Mapping[str, type[Any]]] = {
    cls.__name__: cls
    for cls in (
        AckCommit,
        AckRun,
        NackCommit,
        NackRun,
        NodeAborted,
        NodeBack,
        NodeDown,
        Output,
        Result,
    )
}


@dataclasses.dataclass(frozen=True, slots=True)
class FrameItem:
    """A frame for node ``node`` of ``org``, connected to the receiver."""

    org: str
    node: str
    type: str
    fields: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class EventItem:
    """A node's event for the job ``job_id`` of ``org``, driven by the receiver."""

    org: str
    job_id: str
    event: NodeEvent


@dataclasses.dataclass(frozen=True, slots=True)
class AbortItem:
    """An operator's abort of the job ``job_id`` of ``org``, driven by the receiver."""

    org: str
    job_id: str


MailItem: TypeAlias = FrameItem | EventItem | AbortItem


def event_fields(event: NodeEvent) -> dict[str, Any]:
    """``event``'s fields as a msgpack-able map (a ``NodeBack``'s result nested)."""
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    result = fields.get("result")
    if isinstance(event, NodeBack) and result is not None:
        fields["result"] = event_fields(result)
    return fields


def _event(kind: str, fields: Mapping[str, Any]) -> NodeEvent:
    cls = _EVENTS.get(kind)
    if cls is None:
        raise ProtocolError(f"mail: unknown event {kind!r}")
    values = dict(fields)
    if cls is NodeBack and values.get("result") is not None:
        values["result"] = _event("Result", values["result"])
    try:
        event: NodeEvent = cls(**values)
    except TypeError as e:
        raise ProtocolError(f"mail: bad {kind} fields ({e})") from None
    return event


def encode_mail(items: list[MailItem]) -> bytes:
    """One row's payload."""
    out: list[list[Any]] = []
    for item in items:
        if isinstance(item, FrameItem):
            out.append(["frame", item.org, item.node, item.type, item.fields])
        elif isinstance(item, AbortItem):
            out.append(["abort", item.org, item.job_id, "", {}])
        else:
            kind = type(item.event).__name__
            out.append(["event", item.org, item.job_id, kind, event_fields(item.event)])
    return bytes(msgpack.packb(out, use_bin_type=True))


def decode_mail(payload: bytes) -> list[MailItem]:
    """The items of one row's payload.

    Raises:
        ProtocolError: the payload is not mail (an appliance of another version?).
    """
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        items: list[MailItem] = []
        for tag, org, name, kind, fields in raw:
            if tag == "frame":
                items.append(FrameItem(str(org), str(name), str(kind), dict(fields)))
            elif tag == "event":
                items.append(EventItem(str(org), str(name), _event(str(kind), fields)))
            elif tag == "abort":
                items.append(AbortItem(str(org), str(name)))
            else:
                raise ProtocolError(f"mail: unknown item {tag!r}")
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"mail: undecodable payload ({e})") from None
    return items
