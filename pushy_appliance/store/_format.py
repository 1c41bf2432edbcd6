"""The store's on-disk format. Pure: encodes and decodes bytes, never touches a file.

Directory layout (``DATA/store/``)::

    segment-<first seq, 16 digits>.log        append-only log of records
    snapshot-<seq, 16 digits>.msgpack          the whole state as of record <seq>
    snapshot-<seq, 16 digits>.msgpack.tmp      a snapshot being written; removed at open
    archive-<number, 16 digits>.pack          blobs (finished jobs' details) read by offset
    quarantine/<segment>.<offset>.bad          bytes cut off a damaged segment tail
    quarantine/<snapshot>.bad                  a snapshot that failed its check
    lock                                       flock()ed by the process that has the store open

Integers are unsigned and big-endian. CRC-32 is ``zlib.crc32`` (ISO-HDLC, as in zip/PNG).

Segment file: a 24-byte header, then records back to back::

    offset size field
    0      8    magic       b"PUSHYLOG"
    8      2    version     1
    10     2    flags       0 (reserved)
    12     8    first_seq   seq of the segment's first record; equals the number in the name
    20     4    crc32       CRC-32 of header bytes 0..19

    record (at any offset >= 24):
    0      4    length      payload size in bytes, 1 .. MAX_RECORD_BYTES
    4      4    crc32       CRC-32 of the 4 length bytes followed by the payload
    8      n    payload     the record: a msgpack map (use_bin_type=True)

A record's seq is not written down: it is ``first_seq`` plus the record's index in its
segment. Seqs are global, 1-based and without gaps, so the next segment's ``first_seq`` is
this one's ``first_seq`` plus its record count. A segment is appended to only by the single
writer, one group of records per fsync; a crash can therefore leave at most a torn group at
the end of the newest segment, never damage in the middle of the log.

Snapshot file: a 32-byte header, then the payload::

    offset size field
    0      8    magic       b"PUSHYSNP"
    8      2    version     2 (1: written before archives; still read)
    10     2    flags       0 (reserved)
    12     8    seq         the state includes every record up to and including seq;
                            equals the number in the name
    20     8    length      payload size in bytes; the file is exactly 32 + length bytes
    28     4    crc32       CRC-32 of header bytes 0..27 followed by the payload
    32     n    payload     version 2: one msgpack array [archives, state]; version 1: the
                            state alone (msgpack, use_bin_type=True)

``archives`` maps the number of every archive file the state refers to onto the end of the
last blob it uses there (an offset); the state itself holds the blob references (the store
does not look inside it). A reader that wants only ``archives`` decodes the payload's first
item (:func:`snapshot_archives`).

Archive file: a 24-byte header, then blobs back to back, each framed exactly like a record::

    offset size field
    0      8    magic       b"PUSHYARC"
    8      2    version     1
    10     2    flags       0 (reserved)
    12     8    number      equals the number in the name; numbers are never reused
    20     4    crc32       CRC-32 of header bytes 0..19

    blob (at any offset >= 24):
    0      4    length      payload size in bytes, 1 .. MAX_RECORD_BYTES
    4      4    crc32       CRC-32 of the 4 length bytes followed by the payload
    8      n    payload     one msgpack object, opaque to the store

A blob is named by its reference ``[number, offset, length]`` (``offset`` of its frame,
``length`` of its payload). Blobs are appended one group per fsync and their references are
handed out only once the group is durable, so a crash can leave at most a torn group at the
end of an archive, which nothing refers to. An archive is never changed otherwise; it is
deleted once neither of the two kept snapshots refers to it (and no reference to it was
handed out since).

Payloads are decoded with ``raw=False`` (str stays str, bytes stay bytes) and
``strict_map_key=False`` (a nested map may have integer keys). A record whose frame or
payload fails any of these checks is *damaged*; everything from its first byte to the end of
the file is treated as one damaged tail.

Why one module of about 650 lines: every on-disk byte layout (segment and snapshot headers,
record and blob frames, their CRCs and scanning) is defined here once, so a change to the
format is reviewed in one file.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgpack
from msgpack.exceptions import UnpackException

from ..errors import StoreCorruptError

__all__ = [
    "ARCHIVE_HEADER",
    "ARCHIVE_MAGIC",
    "FORMAT_VERSION",
    "FRAME_HEADER",
    "MAX_RECORD_BYTES",
    "SEGMENT_HEADER",
    "SEGMENT_MAGIC",
    "SNAPSHOT_HEADER",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "ArchiveScan",
    "BlobRef",
    "FrameScan",
    "Snapshot",
    "archive_name",
    "check_blob",
    "decode_snapshot",
    "encode_archive_header",
    "encode_blob",
    "encode_record",
    "encode_segment_header",
    "encode_snapshot",
    "iter_records",
    "pack",
    "parse_archive_name",
    "parse_segment_name",
    "parse_snapshot_name",
    "scan_archive",
    "scan_frames",
    "scan_segment",
    "segment_name",
    "snapshot_archives",
    "snapshot_name",
    "unpack",
]

FORMAT_VERSION: Final = 1
"""Version of segment and archive files."""
SNAPSHOT_VERSION: Final = 2
"""Version of the snapshot files written now (version 1 is still read)."""
SEGMENT_MAGIC: Final = b"PUSHYLOG"
SNAPSHOT_MAGIC: Final = b"PUSHYSNP"
ARCHIVE_MAGIC: Final = b"PUSHYARC"
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
"""Largest payload a record may have; a larger length field marks a damaged frame."""

_SEGMENT_HEAD = struct.Struct(">8sHHQ")
_SNAPSHOT_HEAD = struct.Struct(">8sHHQQ")
_U32 = struct.Struct(">I")
_FRAME = struct.Struct(">II")

SEGMENT_HEADER: Final = _SEGMENT_HEAD.size + 4
"""Size of a segment header (24)."""
SNAPSHOT_HEADER: Final = _SNAPSHOT_HEAD.size + 4
"""Size of a snapshot header (32)."""
ARCHIVE_HEADER: Final = SEGMENT_HEADER
"""Size of an archive header (24)."""
FRAME_HEADER: Final = _FRAME.size
"""Size of a record's (or blob's) length + CRC (8)."""

_SEGMENT_RE = re.compile(r"^segment-(\d{16})\.log$")
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{16})\.msgpack$")
_ARCHIVE_RE = re.compile(r"^archive-(\d{16})\.pack$")

BlobRef = tuple[int, int, int]
"""``(archive number, frame offset, payload length)`` of one archived blob."""


# --- names ----------------------------------------------------------------------------------


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first record is ``first_seq``."""
    return f"segment-{first_seq:016d}.log"


def snapshot_name(seq: int) -> str:
    """The file name of the snapshot as of ``seq``."""
    return f"snapshot-{seq:016d}.msgpack"


def parse_segment_name(name: str) -> int | None:
    """The first seq named by a segment file name, or ``None`` if it is not one."""
    m = _SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


def parse_snapshot_name(name: str) -> int | None:
    """The seq named by a snapshot file name, or ``None`` if it is not one."""
    m = _SNAPSHOT_RE.match(name)
    return int(m.group(1)) if m else None


def archive_name(number: int) -> str:
    """The file name of archive ``number``."""
    return f"archive-{number:016d}.pack"


def parse_archive_name(name: str) -> int | None:
    """The number named by an archive file name, or ``None`` if it is not one."""
    m = _ARCHIVE_RE.match(name)
    return int(m.group(1)) if m else None


# --- msgpack --------------------------------------------------------------------------------


def pack(obj: Any) -> bytes:
    """Serialize ``obj`` as msgpack.

    Raises:
        TypeError: when ``obj`` holds something msgpack cannot represent.
    """
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"not msgpack-serializable: {e}") from None
    return data


def unpack(data: bytes) -> Any:
    """Deserialize one msgpack object that fills ``data`` exactly.

    Raises:
        ValueError: when ``data`` is not exactly one valid msgpack object.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, UnpackException) as e:
        raise ValueError(f"undecodable msgpack: {e}") from None


# --- segments -------------------------------------------------------------------------------


def encode_segment_header(first_seq: int) -> bytes:
    """The 24-byte header of a segment starting at ``first_seq``."""
    head = _SEGMENT_HEAD.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, first_seq)
    return head + _U32.pack(zlib.crc32(head))


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Frame one record: length, CRC, msgpack payload.

    Args:
        record: a map with string keys whose values msgpack can represent.

    Returns:
        The bytes to append to a segment.

    Raises:
        TypeError: when ``record`` is not a dict or is not msgpack-serializable.
        ValueError: when its payload is larger than :data:`MAX_RECORD_BYTES`.
    """
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a dict, not {type(record).__name__}")
    payload = pack(record)
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentScan:
    """What :func:`scan_segment` found in one segment file.

    Attributes:
        first_seq: the seq of the first record (from the file name).
        records: the intact records, in order; record ``i`` has seq ``first_seq + i``.
        end: offset just past the last intact record (0 if the header is bad).
        damage: the first problem found, or ``None`` if the whole file is intact. When set,
            every byte from ``damage.offset`` (== ``end``) to the end of the file is damaged.
    """

    first_seq: int
    records: list[dict[str, Any]]
    end: int
    damage: StoreCorruptError | None

    @property
    def header_ok(self) -> bool:
        """Whether the header was intact (if not, the file holds no usable record)."""
        return self.end > 0


def _check_header(
    data: bytes, path: str, number: int, magic_wanted: bytes, what: str
) -> StoreCorruptError | None:
    """Check the 24-byte header of a segment (``what``: ``first seq``) or an archive."""
    if len(data) < SEGMENT_HEADER:
        return StoreCorruptError(path, 0, f"torn header ({len(data)} of {SEGMENT_HEADER} bytes)")
    magic, version, _flags, named = _SEGMENT_HEAD.unpack_from(data)
    if magic != magic_wanted:
        return StoreCorruptError(path, 0, f"bad magic {magic!r}")
    (crc,) = _U32.unpack_from(data, _SEGMENT_HEAD.size)
    if crc != zlib.crc32(data[: _SEGMENT_HEAD.size]):
        return StoreCorruptError(path, 0, "header CRC mismatch")
    if version != FORMAT_VERSION:
        return StoreCorruptError(path, 0, f"unsupported format version {version}")
    if named != number:
        return StoreCorruptError(path, 0, f"header says {what} {named}, name says {number}")
    return None


def _check_frame(
    data: bytes, offset: int, path: str, what: str = "record"
) -> tuple[StoreCorruptError | None, int]:
    """Check the frame at ``offset``: ``(None, payload length)`` if intact."""
    size = len(data)
    if size - offset < FRAME_HEADER:
        return StoreCorruptError(path, offset, f"torn frame header ({size - offset} bytes)"), 0
    length, crc = _FRAME.unpack_from(data, offset)
    if not 1 <= length <= MAX_RECORD_BYTES:
        return StoreCorruptError(path, offset, f"impossible {what} length {length}"), 0
    start = offset + FRAME_HEADER
    if start + length > size:
        problem = f"torn {what} ({size - start} of {length} payload bytes)"
        return StoreCorruptError(path, offset, problem), 0
    if crc != zlib.crc32(data[start : start + length], zlib.crc32(data[offset : offset + 4])):
        return StoreCorruptError(path, offset, f"{what} CRC mismatch"), 0
    return None, length


def scan_segment(data: bytes, *, path: str, first_seq: int) -> SegmentScan:
    """Check and decode every record of a segment file's contents.

    Args:
        data: the whole file.
        path: the file's path, for messages.
        first_seq: the seq in the file's name.

    Returns:
        The intact records and where the damage, if any, starts. Never raises for damage.
    """
    bad_header = _check_header(data, path, first_seq, SEGMENT_MAGIC, "first seq")
    if bad_header is not None:
        return SegmentScan(first_seq, [], 0, bad_header)
    records: list[dict[str, Any]] = []
    offset = SEGMENT_HEADER
    size = len(data)
    damage: StoreCorruptError | None = None
    while offset < size:
        damage, length = _check_frame(data, offset, path)
        if damage is not None:
            break
        start = offset + FRAME_HEADER
        try:
            record = unpack(data[start : start + length])
        except ValueError as e:
            damage = StoreCorruptError(path, offset, str(e))
            break
        if not isinstance(record, dict):
            damage = StoreCorruptError(path, offset, f"record is a {type(record).__name__}")
            break
        records.append(record)
        offset = start + length
    return SegmentScan(first_seq, records, offset, damage)


@dataclasses.dataclass(frozen=True, slots=True)
class FrameScan:
    """What :func:`scan_frames` found in one segment file (as :class:`SegmentScan`, with a
    count instead of the records)."""

    first_seq: int
    count: int
    end: int
    damage: StoreCorruptError | None

    @property
    def header_ok(self) -> bool:
        return self.end > 0


def scan_frames(data: bytes, *, path: str, first_seq: int, decode: bool) -> FrameScan:
    """Check every record's frame (length, CRC) of a segment file's contents, keeping none.

    Args:
        data: the whole file.
        path: the file's path, for messages.
        first_seq: the seq in the file's name.
        decode: also decode each payload (and drop it) to check that it is a msgpack map,
            as :func:`scan_segment` does.

    Returns:
        How many records are intact and where the damage, if any, starts.
    """
    bad_header = _check_header(data, path, first_seq, SEGMENT_MAGIC, "first seq")
    if bad_header is not None:
        return FrameScan(first_seq, 0, 0, bad_header)
    count = 0
    offset = SEGMENT_HEADER
    damage: StoreCorruptError | None = None
    while offset < len(data):
        damage, length = _check_frame(data, offset, path)
        if damage is not None:
            break
        start = offset + FRAME_HEADER
        if decode:
            damage = _decode_problem(data[start : start + length], path, offset)
            if damage is not None:
                break
        count += 1
        offset = start + length
    return FrameScan(first_seq, count, offset, damage)


def _decode_problem(payload: bytes, path: str, offset: int) -> StoreCorruptError | None:
    try:
        record = unpack(payload)
    except ValueError as e:
        return StoreCorruptError(path, offset, str(e))
    if not isinstance(record, dict):
        return StoreCorruptError(path, offset, f"record is a {type(record).__name__}")
    return None


def iter_records(data: bytes, *, path: str, end: int) -> Iterator[dict[str, Any]]:
    """Decode the records of a segment file's contents, up to ``end`` (frames that
    :func:`scan_frames` checked).

    Raises:
        StoreCorruptError: a record is not a msgpack map (frames checked by CRC alone).
    """
    offset = SEGMENT_HEADER
    while offset < end:
        length = _U32.unpack_from(data, offset)[0]
        start = offset + FRAME_HEADER
        try:
            record = unpack(data[start : start + length])
        except ValueError as e:
            raise StoreCorruptError(path, offset, str(e)) from None
        if not isinstance(record, dict):
            raise StoreCorruptError(path, offset, f"record is a {type(record).__name__}")
        yield record
        offset = start + length


# --- snapshots ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot file.

    Attributes:
        state: the state, as the caller of ``write_snapshot`` gave it.
        archives: archive number → end of the last blob the state uses in it.
    """

    state: Any
    archives: dict[int, int]


def encode_snapshot(state: Any, seq: int, archives: Mapping[int, int] | None = None) -> bytes:
    """The whole contents of the snapshot file for ``state`` as of ``seq``.

    Args:
        state: the state.
        seq: the last record it includes.
        archives: archive number → end of the last blob ``state`` refers to in it.

    Raises:
        TypeError: when ``state`` is not msgpack-serializable.
    """
    payload = pack([dict(archives or {}), state])
    head = _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, seq, len(payload))
    return head + _U32.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def _checked_snapshot_payload(data: bytes, path: str, seq: int) -> tuple[int, bytes]:
    if len(data) < SNAPSHOT_HEADER:
        raise StoreCorruptError(path, 0, f"torn header ({len(data)} of {SNAPSHOT_HEADER} bytes)")
    magic, version, _flags, named, length = _SNAPSHOT_HEAD.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise StoreCorruptError(path, 0, f"bad magic {magic!r}")
    if len(data) != SNAPSHOT_HEADER + length:
        raise StoreCorruptError(
            path,
            SNAPSHOT_HEADER,
            f"{len(data) - SNAPSHOT_HEADER} payload bytes, header says {length}",
        )
    (crc,) = _U32.unpack_from(data, _SNAPSHOT_HEAD.size)
    payload = data[SNAPSHOT_HEADER:]
    if crc != zlib.crc32(payload, zlib.crc32(data[: _SNAPSHOT_HEAD.size])):
        raise StoreCorruptError(path, 0, "snapshot CRC mismatch")
    if version not in (1, SNAPSHOT_VERSION):
        raise StoreCorruptError(path, 0, f"unsupported format version {version}")
    if named != seq:
        raise StoreCorruptError(path, 0, f"header says seq {named}, name says {seq}")
    return version, payload


def _archives_map(value: Any, path: str) -> dict[int, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, int) and isinstance(v, int) and k >= 0 and v >= 0 for k, v in value.items()
    ):
        raise StoreCorruptError(path, SNAPSHOT_HEADER, "archives is not a map of numbers")
    return value


def decode_snapshot(data: bytes, *, path: str, seq: int) -> Snapshot:
    """Check a snapshot file's contents and decode it.

    Args:
        data: the whole file.
        path: the file's path, for messages.
        seq: the seq in the file's name.

    Returns:
        The state and the archives it refers to (none for a version 1 file).

    Raises:
        StoreCorruptError: when any check fails.
    """
    version, payload = _checked_snapshot_payload(data, path, seq)
    try:
        decoded = unpack(payload)
    except ValueError as e:
        raise StoreCorruptError(path, SNAPSHOT_HEADER, str(e)) from None
    if version == 1:
        return Snapshot(decoded, {})
    if not isinstance(decoded, list) or len(decoded) != 2:
        raise StoreCorruptError(path, SNAPSHOT_HEADER, "payload is not [archives, state]")
    return Snapshot(decoded[1], _archives_map(decoded[0], path))


def snapshot_archives(data: bytes, *, path: str, seq: int) -> dict[int, int]:
    """The ``archives`` of a snapshot file, decoding nothing of its state (the CRC of the
    whole file is checked).

    Raises:
        StoreCorruptError: when any check fails.
    """
    version, payload = _checked_snapshot_payload(data, path, seq)
    if version == 1:
        return {}
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(payload))
    unpacker.feed(payload)
    try:
        if unpacker.read_array_header() != 2:
            raise ValueError("not a pair")
        first = unpacker.unpack()
    except (ValueError, TypeError, UnpackException) as e:
        problem = f"payload is not [archives, state]: {e}"
        raise StoreCorruptError(path, SNAPSHOT_HEADER, problem) from None
    return _archives_map(first, path)


# --- archives -------------------------------------------------------------------------------


def encode_archive_header(number: int) -> bytes:
    """The 24-byte header of archive ``number``."""
    head = _SEGMENT_HEAD.pack(ARCHIVE_MAGIC, FORMAT_VERSION, 0, number)
    return head + _U32.pack(zlib.crc32(head))


def encode_blob(payload: bytes) -> bytes:
    """Frame one blob (length, CRC, payload) to append to an archive.

    Raises:
        ValueError: when ``payload`` is empty or larger than :data:`MAX_RECORD_BYTES`.
    """
    if not 1 <= len(payload) <= MAX_RECORD_BYTES:
        raise ValueError(f"a blob of {len(payload)} bytes (1 .. {MAX_RECORD_BYTES})")
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


def check_blob(frame: bytes, *, path: str, offset: int, length: int) -> bytes:
    """The payload of a blob read back (its frame, ``FRAME_HEADER + length`` bytes read at
    ``offset``), once its length and CRC check out.

    Raises:
        StoreCorruptError: the bytes are not that blob.
    """
    if len(frame) != FRAME_HEADER + length:
        raise StoreCorruptError(path, offset, f"blob cut short ({len(frame)} bytes read)")
    stored, crc = _FRAME.unpack_from(frame)
    if stored != length:
        raise StoreCorruptError(path, offset, f"blob length {stored}, reference says {length}")
    payload = frame[FRAME_HEADER:]
    if crc != zlib.crc32(payload, zlib.crc32(frame[:4])):
        raise StoreCorruptError(path, offset, "blob CRC mismatch")
    return payload


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveScan:
    """What :func:`scan_archive` found in one archive file.

    Attributes:
        blobs: intact blobs, as ``(offset, length)``.
        end: offset just past the last intact blob (0 if the header is bad).
        damage: the first problem, or ``None``; when set, every byte from ``damage.offset``
            (== ``end``) to the end of the file is damaged.
    """

    blobs: list[tuple[int, int]]
    end: int
    damage: StoreCorruptError | None


def scan_archive(data: bytes, *, path: str, number: int) -> ArchiveScan:
    """Check every blob's frame of an archive file's contents (payloads are not decoded).

    Args:
        data: the whole file.
        path: the file's path, for messages.
        number: the number in the file's name.

    Returns:
        The intact blobs and where the damage, if any, starts. Never raises for damage.
    """
    bad = _check_header(data, path, number, ARCHIVE_MAGIC, "number")
    if bad is not None:
        return ArchiveScan([], 0, bad)
    blobs: list[tuple[int, int]] = []
    offset = ARCHIVE_HEADER
    size = len(data)
    damage: StoreCorruptError | None = None
    while offset < size:
        problem, length = _check_frame(data, offset, path, "blob")
        if problem is not None:
            damage = problem
            break
        blobs.append((offset, length))
        offset += FRAME_HEADER + length
    return ArchiveScan(blobs, offset, damage)
