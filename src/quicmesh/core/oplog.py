"""Signed, hash-linked log operations (the p2panda operation header, simplified).

Theory of operation
-------------------
An author (an Ed25519 key) writes any number of *logs*, each named by a short string. The
operations of one ``(author, log)`` form a chain: ``seq`` counts from 0 and every operation with
``seq > 0`` carries a *backlink*, the id of the operation before it. An operation is a
:class:`Header` plus the author's signature; the payload travels next to it and is bound to it by
``payload_hash`` and ``payload_size``.

* **Hash**: BLAKE2b with a 32-byte digest (``hashlib.blake2b(digest_size=32)``) everywhere:
  payload hash, operation id and backlink. (p2panda uses BLAKE3, not in the standard library.)
* **Canonical encoding**: MessagePack of the header as a positional array (``msgspec``
  ``array_like``), deterministic for a given header. :func:`decode_operation` re-encodes what it
  decoded and refuses input that is not byte-for-byte canonical, so every accepted byte string
  maps to exactly one operation and back.
* **Signature**: Ed25519 by ``author`` over ``SIGNING_CONTEXT + encode(header)``. The context
  string separates operation signatures from the other signatures a node key makes (the
  connection handshake proof).
* **Id**: ``blake2b(encode_operation(op))``, the hash of the *signed* header; the backlink of the
  next operation is this id.
* **Realm**: the header carries the realm's wire identity (an opaque string the node is given:
  today the realm name), so an operation signed for one realm is refused by the nodes of
  another (:class:`~quicmesh.errors.ForeignRealm`) and cannot be replayed across realms.
* **Extensions**: ``prune``: the author declares that every operation before this one in this
  log may be dropped. A prune operation may follow a gap (its predecessors need not be known),
  and every replica drops the older operations of that log when it stores one.

:func:`validate` checks, in order: version, realm, sizes and field ranges, timestamp, signature,
payload, chain; and raises the matching :class:`~quicmesh.errors.InvalidOperation` subclass.
The realm and the timestamp are checked against an :class:`Acceptance` (the receiver's realm
and the latest timestamp it accepts: its wall clock plus ``store.max_clock_skew``).

A writer checks its own new operation with :func:`validate_local`: the bytes its peers will
receive are decoded exactly as they decode them (:func:`decode_operation`) and then validated
with the same :func:`validate` and the same :class:`Acceptance` rules, so a write this node
stores is never one its peers refuse (the replicas cannot split over it).

Version 2 (this release) added the realm; version 1 operations are refused with
:class:`~quicmesh.errors.UnknownVersion`. Nothing in this module does I/O.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, NamedTuple

import msgspec

from ..errors import (
    BacklinkMismatch,
    ForeignRealm,
    InvalidOperation,
    OperationTooLarge,
    PayloadMismatch,
    SeqGap,
    TimestampAhead,
    UnknownVersion,
)
from ..identity import KeyPair, NodeId

__all__ = [
    "MAX_LOG_NAME",
    "MAX_REALM",
    "MAX_TIMESTAMP",
    "OP_VERSION",
    "SIGNING_CONTEXT",
    "Acceptance",
    "Header",
    "LogHead",
    "Operation",
    "create_operation",
    "decode_operation",
    "encode_operation",
    "hash_bytes",
    "operation_id",
    "validate",
    "validate_local",
]

OP_VERSION = 2
"""The header version this release writes and accepts."""

MAX_LOG_NAME = 255
"""Longest log name, in UTF-8 bytes."""

MAX_REALM = 255
"""Longest realm identity in a header, in UTF-8 bytes."""

SIGNING_CONTEXT = b"quicmesh/op/v2\x00"
"""Prefix of the signed bytes (domain separation from other signatures by the node key)."""

_U63 = (1 << 63) - 1
MAX_TIMESTAMP = _U63
"""The greatest timestamp (and seq) a header can carry: 2^63-1."""
_Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_Bytes64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
_U63Int = Annotated[int, msgspec.Meta(ge=0, le=_U63)]
_LogName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LOG_NAME)]
_Realm = Annotated[str, msgspec.Meta(max_length=MAX_REALM)]


class Header(msgspec.Struct, array_like=True, frozen=True):
    """The unsigned header. Field order is the wire order; never reorder."""

    version: int
    realm: _Realm
    """The wire identity of the realm the operation was written for (signed with the rest)."""
    author: _Bytes32
    log: _LogName
    seq: _U63Int
    backlink: _Bytes32 | None
    payload_hash: _Bytes32
    payload_size: _U63Int
    timestamp: _U63Int
    """Microseconds since the Unix epoch, as the author's clock said."""
    prune: bool = False
    """Extension: every earlier operation of this log may be dropped."""


class Operation(msgspec.Struct, array_like=True, frozen=True):
    """A signed header. Its payload is stored and sent next to it."""

    header: Header
    signature: _Bytes64

    @property
    def author(self) -> NodeId:
        """The author's node id."""
        return NodeId(self.header.author)

    @property
    def log(self) -> str:
        return self.header.log

    @property
    def realm(self) -> str:
        return self.header.realm

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def prune(self) -> bool:
        return self.header.prune

    @property
    def timestamp(self) -> int:
        return self.header.timestamp

    @property
    def id(self) -> bytes:
        """The operation id: the hash of the canonical signed encoding."""
        return operation_id(self)


class LogHead(NamedTuple):
    """What a validator needs to know of a log's latest stored operation."""

    seq: int
    id: bytes


class Acceptance(NamedTuple):
    """What a node accepts besides a valid signed chain: operations of its realm, stamped no
    later than ``not_after`` (microseconds: its wall clock plus ``store.max_clock_skew``)."""

    realm: str
    not_after: int

    @classmethod
    def at(cls, realm: str, wall_us: int, skew_s: float) -> Acceptance:
        """The acceptance of a node of ``realm`` whose wall clock says ``wall_us``."""
        return cls(realm, min(MAX_TIMESTAMP, max(0, wall_us) + max(0, int(skew_s * 1_000_000))))


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Operation)
_HEADER_BYTES_LIMIT = 1024  # a header is ~180 bytes plus the log name (<= 255 bytes)


def hash_bytes(data: bytes) -> bytes:
    """BLAKE2b-256 of ``data``."""
    return hashlib.blake2b(data, digest_size=32).digest()


def encode_operation(op: Operation) -> bytes:
    """The canonical bytes of a signed operation (what is stored and sent)."""
    return _ENCODER.encode(op)


def operation_id(op: Operation) -> bytes:
    """The id of ``op``: BLAKE2b-256 of :func:`encode_operation`."""
    return hash_bytes(_ENCODER.encode(op))


def decode_operation(data: bytes | bytearray | memoryview) -> Operation:
    """Decode canonical bytes. Raises only :class:`~quicmesh.errors.InvalidOperation` subclasses:
    :class:`UnknownVersion` for a header of another version, ``OperationTooLarge`` for an
    oversized encoding, ``InvalidOperation`` for anything malformed or non-canonical."""
    if len(data) > _HEADER_BYTES_LIMIT:
        raise OperationTooLarge(f"encoded operation of {len(data)} bytes exceeds {_HEADER_BYTES_LIMIT}")
    raw = bytes(data)
    try:
        op = _DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        _raise_version(raw)
        raise InvalidOperation(f"malformed operation: {exc}") from None
    except Exception as exc:  # pragma: no cover - defensive: msgspec raised something else
        raise InvalidOperation(f"malformed operation: {type(exc).__name__}") from None
    if op.header.version != OP_VERSION:
        raise UnknownVersion(f"operation version {op.header.version} (this release knows {OP_VERSION})")
    if _ENCODER.encode(op) != raw:
        raise InvalidOperation("non-canonical operation encoding")
    return op


def _raise_version(raw: bytes) -> None:
    """Raise UnknownVersion when ``raw`` looks like ``[[version, ...], ...]`` with another version."""
    try:
        loose: Any = msgspec.msgpack.decode(raw)
    except Exception:
        return
    if isinstance(loose, list) and loose and isinstance(loose[0], list) and loose[0]:
        v = loose[0][0]
        if isinstance(v, int) and not isinstance(v, bool) and v != OP_VERSION:
            raise UnknownVersion(f"operation version {v} (this release knows {OP_VERSION})")


def _signing_bytes(header: Header) -> bytes:
    return SIGNING_CONTEXT + _ENCODER.encode(header)


def create_operation(
    keypair: KeyPair,
    log: str,
    payload: bytes,
    prev: Operation | None,
    now_us: int,
    prune: bool = False,
    *,
    realm: str = "default",
) -> Operation:
    """Sign the next operation of ``keypair``'s log ``log`` of realm ``realm`` (the realm's wire
    identity; the default is the default realm name, for tests and tools) after ``prev``
    (``None``: seq 0).

    ``now_us`` is the timestamp in microseconds (negative: 0; above :data:`MAX_TIMESTAMP`:
    :class:`InvalidOperation`). ``prev`` must be this author's latest operation of this log; a
    ``ValueError`` is raised when it belongs to another author or log.
    """
    author = keypair.node_id.raw
    if prev is not None and (prev.header.author != author or prev.header.log != log):
        raise ValueError("prev belongs to another author or log")
    if not log or len(log.encode("utf-8")) > MAX_LOG_NAME:
        raise InvalidOperation(f"a log name is 1 to {MAX_LOG_NAME} bytes")
    if len(realm.encode("utf-8")) > MAX_REALM:
        raise InvalidOperation(f"a realm identity is at most {MAX_REALM} bytes")
    ts = max(0, int(now_us))
    if ts > MAX_TIMESTAMP:
        raise InvalidOperation(f"timestamp {ts} beyond 2^63-1")
    header = Header(
        version=OP_VERSION,
        realm=realm,
        author=author,
        log=log,
        seq=0 if prev is None else prev.header.seq + 1,
        backlink=None if prev is None else operation_id(prev),
        payload_hash=hash_bytes(payload),
        payload_size=len(payload),
        timestamp=ts,
        prune=prune,
    )
    return Operation(header=header, signature=keypair.sign(_signing_bytes(header)))


def validate(
    op: Operation,
    payload: bytes | None,
    prev: Operation | LogHead | None,
    max_size: int,
    *,
    allow_gap: bool = False,
    accept: Acceptance | None = None,
) -> None:
    """Check ``op`` (and its ``payload`` unless ``None``) against the log's latest operation.

    ``prev`` is the latest stored operation of ``op``'s log (or its :class:`LogHead`), ``None``
    when the log is empty. ``max_size`` caps the payload size in bytes. ``accept`` (the node's
    realm and latest acceptable timestamp; ``None``: not checked, for stores used on their own)
    Raises, in this order: :class:`UnknownVersion`, :class:`ForeignRealm`,
    :class:`InvalidOperation` (log name or realm in bytes too long, a field out of range),
    :class:`OperationTooLarge`, :class:`TimestampAhead`, :class:`SignatureMismatch`,
    :class:`PayloadMismatch`, :class:`SeqGap` (seq does not follow ``prev``),
    :class:`BacklinkMismatch`.

    A forward gap (``op.seq > prev.seq + 1``, or ``seq > 0`` on an empty log) is accepted when
    ``op`` carries the prune flag or ``allow_gap`` is true: the caller then drops the older
    operations. A seq at or below ``prev.seq`` raises :class:`SeqGap` (the caller decides first
    whether it is a duplicate).
    """
    h = op.header
    if h.version != OP_VERSION:
        raise UnknownVersion(f"operation version {h.version} (this release knows {OP_VERSION})")
    if accept is not None and h.realm != accept.realm:
        raise ForeignRealm("operation of another realm")
    if len(h.log.encode("utf-8")) > MAX_LOG_NAME or len(h.realm.encode("utf-8")) > MAX_REALM:
        raise InvalidOperation(f"log name or realm longer than {MAX_LOG_NAME} bytes")
    if not (0 <= h.seq <= MAX_TIMESTAMP and 0 <= h.timestamp <= MAX_TIMESTAMP and 0 <= h.payload_size <= MAX_TIMESTAMP):
        raise InvalidOperation("seq, timestamp or payload size outside 0..2^63-1")
    if h.payload_size > max_size:
        raise OperationTooLarge(f"payload of {h.payload_size} bytes exceeds {max_size}")
    if accept is not None and h.timestamp > accept.not_after:
        ahead = (h.timestamp - accept.not_after) / 1e6
        raise TimestampAhead(f"timestamp {h.timestamp} is {ahead:.3f} s beyond the accepted clock skew")
    if (h.seq == 0) != (h.backlink is None):
        raise BacklinkMismatch("a backlink is required iff seq > 0")
    NodeId(h.author).verify(op.signature, _signing_bytes(h))
    if payload is not None:
        if len(payload) != h.payload_size:
            raise PayloadMismatch(f"payload is {len(payload)} bytes, header says {h.payload_size}")
        if hash_bytes(payload) != h.payload_hash:
            raise PayloadMismatch("payload hash differs from the header")
    gap_ok = h.prune or allow_gap
    if prev is None:
        if h.seq != 0 and not gap_ok:
            raise SeqGap(f"seq {h.seq} on an empty log")
        return
    if isinstance(prev, Operation):
        if prev.header.author != h.author or prev.header.log != h.log:
            raise ValueError("prev belongs to another author or log")
        prev = LogHead(prev.header.seq, operation_id(prev))
    if h.seq <= prev.seq:
        raise SeqGap(f"seq {h.seq} is not after the log's latest {prev.seq}")
    if h.seq == prev.seq + 1:
        if h.backlink != prev.id:
            raise BacklinkMismatch(f"seq {h.seq} does not link to the log's operation {prev.seq}")
    elif not gap_ok:
        raise SeqGap(f"seq {h.seq} after {prev.seq}: missing operations")


def validate_local(
    op: Operation,
    payload: bytes,
    prev: Operation | LogHead | None,
    max_size: int,
    *,
    accept: Acceptance | None = None,
) -> None:
    """Check this node's own new operation exactly as its peers will: its canonical bytes are
    decoded with :func:`decode_operation` (field ranges, sizes, version) and the result is
    checked with :func:`validate` (no gap allowed unless ``op`` prunes). Raises what those raise
    (:class:`~quicmesh.errors.InvalidOperation` subclasses); nothing else."""
    try:
        data = encode_operation(op)
    except (OverflowError, TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidOperation(f"operation cannot be encoded: {exc}") from None
    validate(decode_operation(data), payload, prev, max_size, accept=accept)
