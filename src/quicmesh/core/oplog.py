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
* **Extensions**: ``prune``: the author declares that every operation before this one in this
  log may be dropped. A prune operation may follow a gap (its predecessors need not be known),
  and every replica drops the older operations of that log when it stores one.

:func:`validate` checks, in order: version, sizes, signature, payload, chain; and raises the
matching :class:`~quicmesh.errors.InvalidOperation` subclass. Nothing in this module does I/O.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, NamedTuple

import msgspec

from ..errors import (
    BacklinkMismatch,
    InvalidOperation,
    OperationTooLarge,
    PayloadMismatch,
    SeqGap,
    UnknownVersion,
)
from ..identity import KeyPair, NodeId

__all__ = [
    "MAX_LOG_NAME",
    "OP_VERSION",
    "SIGNING_CONTEXT",
    "Header",
    "LogHead",
    "Operation",
    "create_operation",
    "decode_operation",
    "encode_operation",
    "hash_bytes",
    "operation_id",
    "validate",
]

OP_VERSION = 1
"""The header version this release writes and accepts."""

MAX_LOG_NAME = 255
"""Longest log name, in UTF-8 bytes."""

SIGNING_CONTEXT = b"quicmesh/op/v1\x00"
"""Prefix of the signed bytes (domain separation from other signatures by the node key)."""

_U63 = (1 << 63) - 1
_Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_Bytes64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
_U63Int = Annotated[int, msgspec.Meta(ge=0, le=_U63)]
_LogName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LOG_NAME)]


class Header(msgspec.Struct, array_like=True, frozen=True):
    """The unsigned header. Field order is the wire order; never reorder."""

    version: int
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
) -> Operation:
    """Sign the next operation of ``keypair``'s log ``log`` after ``prev`` (``None``: seq 0).

    ``now_us`` is the timestamp in microseconds. ``prev`` must be this author's latest operation
    of this log; a ``ValueError`` is raised when it belongs to another author or log.
    """
    author = keypair.node_id.raw
    if prev is not None and (prev.header.author != author or prev.header.log != log):
        raise ValueError("prev belongs to another author or log")
    if not log or len(log.encode("utf-8")) > MAX_LOG_NAME:
        raise InvalidOperation(f"a log name is 1 to {MAX_LOG_NAME} bytes")
    header = Header(
        version=OP_VERSION,
        author=author,
        log=log,
        seq=0 if prev is None else prev.header.seq + 1,
        backlink=None if prev is None else operation_id(prev),
        payload_hash=hash_bytes(payload),
        payload_size=len(payload),
        timestamp=max(0, int(now_us)),
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
) -> None:
    """Check ``op`` (and its ``payload`` unless ``None``) against the log's latest operation.

    ``prev`` is the latest stored operation of ``op``'s log (or its :class:`LogHead`), ``None``
    when the log is empty. ``max_size`` caps the payload size in bytes. Raises, in this order:
    :class:`UnknownVersion`, :class:`InvalidOperation` (log name in bytes too long),
    :class:`OperationTooLarge`, :class:`SignatureMismatch`, :class:`PayloadMismatch`,
    :class:`SeqGap` (seq does not follow ``prev``), :class:`BacklinkMismatch`.

    A forward gap (``op.seq > prev.seq + 1``, or ``seq > 0`` on an empty log) is accepted when
    ``op`` carries the prune flag or ``allow_gap`` is true: the caller then drops the older
    operations. A seq at or below ``prev.seq`` raises :class:`SeqGap` (the caller decides first
    whether it is a duplicate).
    """
    h = op.header
    if h.version != OP_VERSION:
        raise UnknownVersion(f"operation version {h.version} (this release knows {OP_VERSION})")
    if len(h.log.encode("utf-8")) > MAX_LOG_NAME:
        raise InvalidOperation(f"log name longer than {MAX_LOG_NAME} bytes")
    if h.payload_size > max_size:
        raise OperationTooLarge(f"payload of {h.payload_size} bytes exceeds {max_size}")
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
