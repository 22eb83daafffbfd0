"""The message a subscription hands its reader: :class:`Message` (``quicmesh.Message``).

Its own module so that a light client (:mod:`quicmesh.runtime.client`), which receives the same
messages through its gateway, loads neither the node's driver nor its core (#14: a script that
connects per task pays for what it imports).
"""

from __future__ import annotations

import msgspec

from ..identity import NodeId

__all__ = ["Message"]


class Message(msgspec.Struct, frozen=True, gc=False):
    """A topic message delivered to a subscription (immutable; compares by value)."""

    topic: str
    payload: bytes
    sender: NodeId
    seq: int
