"""Wire messages of replicated-log sync (tags prefixed ``l.``). Add :data:`LOG_MESSAGES` to the
node's codec.

Operations travel as their canonical bytes (:func:`quicmesh.core.oplog.encode_operation`) next
to their payload, and are decoded and validated by the receiver: a message shape check by the
codec is not trusted as validation.

In an authority realm the authors' member certificates travel with their operations (one per
author per message, see :mod:`quicmesh.core.log_trust`): ``SyncBatch.certs`` and ``LiveOp.cert``,
bounded at decode time (each at most ``MAX_CERT_BYTES``). Both fields are optional and trailing:
a message without them decodes as before (an open realm sends none).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .trust import MAX_CERT_BYTES
from .wire import MAX_WIRE_LIST, Message, Name, NodeIdBytes, UInt

_Names = Annotated[list[Name], msgspec.Meta(max_length=MAX_WIRE_LIST)]
_Cert = Annotated[bytes, msgspec.Meta(max_length=MAX_CERT_BYTES)]

__all__ = ["LOG_MESSAGES", "LiveOp", "LogInterest", "SyncBatch", "SyncRequest"]


class SyncRequest(Message, tag="l.req"):
    """Puller -> server: "here is what I have of log ``log``; send me one batch of the rest".

    ``heads`` lists ``(author, latest seq)`` for every author of the log the puller holds.
    The server keeps no state between requests: the puller sends fresh heads each time.
    """

    sid: UInt
    log: Name
    heads: Annotated[list[tuple[NodeIdBytes, UInt]], msgspec.Meta(max_length=MAX_WIRE_LIST)]


class SyncBatch(Message, tag="l.ops"):
    """Server -> puller: up to ``sync_batch_ops`` operations / ``sync_batch_bytes`` bytes.

    ``ops`` holds ``(operation bytes, payload)`` in seq order per author. ``more``: the server
    has further operations the puller lacks (the puller asks again). ``refused``: the server does
    not sync this log. ``certs``: the member certificate of each author in ``ops`` (authority
    realm).
    """

    sid: UInt
    log: Name
    ops: Annotated[list[tuple[bytes, bytes]], msgspec.Meta(max_length=MAX_WIRE_LIST)]
    more: bool
    refused: bool = False
    certs: Annotated[list[_Cert], msgspec.Meta(max_length=MAX_WIRE_LIST)] = []  # bounded: MAX_WIRE_LIST


class LiveOp(Message, tag="l.op"):
    """A newly stored operation pushed to the peers interested in its log, with its author's
    member certificate (``cert``, authority realm)."""

    op: bytes
    payload: bytes
    cert: _Cert | None = None


class LogInterest(Message, tag="l.int"):
    """The log names the sender replicates: ``reset`` replaces the whole set the receiver holds
    for the sender (sent when a connection comes up), otherwise ``added`` and ``removed`` are
    applied to it. The receiver keeps at most ``store.max_interests`` names per peer and ignores
    names that are not valid log names.
    """

    added: _Names
    removed: _Names
    reset: bool = False


LOG_MESSAGES: tuple[type[Message], ...] = (SyncRequest, SyncBatch, LiveOp, LogInterest)
