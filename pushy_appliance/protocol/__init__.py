"""The node protocol's frames: typed records, one ``encode`` and one ``decode`` (pure).

Wire format (``NODES.md`` §2): every WebSocket binary message is one msgpack map with

* ``type`` — the frame type, a string (``hello``, ``welcome``, ``heartbeat``, …);
* ``seq`` — a positive integer, per sender and per connection, starting at 1 and strictly
  increasing (:class:`Sequencer` hands them out, :class:`SeqTracker` checks them);
* ``ts`` — the sender's clock, float seconds since the epoch;
* the fields of that type, with byte strings as msgpack ``bin`` and all other text as ``str``.

Each frame type is a frozen, slotted dataclass with keyword-only fields; ``TYPE`` is its tag.
Optional fields (those with a default of ``None``) are left out of the encoded map when unset
and read back as ``None`` when missing or nil. Every field has a type and a limit (the most
bytes its value takes encoded; texts in UTF-8 bytes), and a key no frame type has, or one its
frame type lacks, is a protocol error: a newer peer announces a new ``protocol_version``
instead (:data:`SUPPORTED_PROTOCOL_VERSIONS`). :func:`decode` is the one place where every
msgpack failure and every schema violation becomes
:class:`~pushy_appliance.errors.ProtocolError` (whose message names the frame type and the
field), and where a frame over the size cap becomes
:class:`~pushy_appliance.errors.FrameTooLargeError`; a large frame's keys and field sizes are
checked before any value of it is decoded, so no frame costs more to refuse than its fields
are allowed to cost.

The server sends the same heartbeat to every node on every tick; only ``seq`` differs per
connection. :class:`HeartbeatTemplate` packs the shared part once and renders each frame by
appending the few bytes of ``seq`` and ``ts``.

Modules: ``_fields`` (the field checkers and limits), ``_facts`` (the check of node
facts), ``_frames`` (the records and their vocabulary), ``_codec`` (encode, decode, the
heartbeat template), ``_seq`` (sequence numbers). Import from here.
"""

from __future__ import annotations

from ._codec import (
    MAX_KEY_BYTES,
    MAX_KEYS,
    SCAN_ABOVE,
    HeartbeatTemplate,
    decode,
    decode_message,
    encode,
    encode_heartbeat_template,
)
from ._fields import MAX_ID_BYTES
from ._frames import (
    CHANNELS,
    FRAME_TYPES,
    FROM_AGENT,
    FROM_SERVER,
    JOB_STATES,
    MAX_AGENT_VERSION_BYTES,
    MAX_COMMAND_BYTES,
    MAX_DIR_BYTES,
    MAX_FACTS_DEPTH,
    MAX_PENDING_RESULT_BYTES,
    MAX_REASON_BYTES,
    MAX_USER_BYTES,
    NACK_COMMIT_REASONS,
    PROTOCOL_VERSION,
    RESULT_STATUSES,
    SUPPORTED_PROTOCOL_VERSIONS,
    Abort,
    Aborted,
    AckCommit,
    AckRun,
    Commit,
    Facts,
    FactValue,
    Frame,
    Heartbeat,
    Hello,
    NackCommit,
    NackRun,
    Output,
    Reload,
    Result,
    ResultAck,
    ResultBody,
    Run,
    Welcome,
)
from ._seq import SeqTracker, Sequencer

__all__ = [
    "CHANNELS",
    "FRAME_TYPES",
    "FROM_AGENT",
    "FROM_SERVER",
    "JOB_STATES",
    "MAX_AGENT_VERSION_BYTES",
    "MAX_COMMAND_BYTES",
    "MAX_DIR_BYTES",
    "MAX_FACTS_DEPTH",
    "MAX_ID_BYTES",
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "MAX_PENDING_RESULT_BYTES",
    "MAX_REASON_BYTES",
    "MAX_USER_BYTES",
    "NACK_COMMIT_REASONS",
    "PROTOCOL_VERSION",
    "RESULT_STATUSES",
    "SCAN_ABOVE",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Abort",
    "Aborted",
    "AckCommit",
    "AckRun",
    "Commit",
    "FactValue",
    "Facts",
    "Frame",
    "Heartbeat",
    "HeartbeatTemplate",
    "Hello",
    "NackCommit",
    "NackRun",
    "Output",
    "Reload",
    "Result",
    "ResultAck",
    "ResultBody",
    "Run",
    "SeqTracker",
    "Sequencer",
    "Welcome",
    "decode",
    "decode_message",
    "encode",
    "encode_heartbeat_template",
]
