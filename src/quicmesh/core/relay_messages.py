"""#13 (relay): the messages between a node and a relay, on their ordinary authenticated
connection (see :mod:`quicmesh.core.relay`). Tags start with ``relay.``."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .wire import Code, Message, NodeIdBytes

__all__ = ["MAX_RELAYED_PACKET", "RELAY_MESSAGES", "RelayData", "RelayForward", "RelayReserve", "RelayReserved"]

MAX_RELAYED_PACKET = 16384
"""Largest QUIC packet carried (bytes): connections on relayed paths use 16 KiB datagrams (a
virtual path has no MTU: its packets travel in the relay connections' streams)."""


class RelayReserve(Message, tag="relay.reserve"):
    """Node -> relay: be reachable through you while this connection lasts (``on=False``:
    release the reservation)."""

    on: bool = True


class RelayReserved(Message, tag="relay.reserved"):
    """Relay -> node: the answer to :class:`RelayReserve` (``reason`` when refused:
    ``disabled``, ``max_relayed_peers``, ``not_member``)."""

    ok: bool
    reason: Code = ""


_Packet = Annotated[bytes, msgspec.Meta(max_length=MAX_RELAYED_PACKET)]


class RelayData(Message, tag="relay.pkt"):
    """Node -> relay: one QUIC packet of a relayed connection, for peer ``p``."""

    p: NodeIdBytes
    d: _Packet


class RelayForward(Message, tag="relay.fwd"):
    """Relay -> node: one QUIC packet from peer ``p`` (the relay fills ``p`` in from the
    authenticated connection the packet came on, so a sender cannot pose as another peer)."""

    p: NodeIdBytes
    d: _Packet


RELAY_MESSAGES: tuple[type[Message], ...] = (RelayReserve, RelayReserved, RelayData, RelayForward)
"""The relay protocol's messages (part of ``ALL_MESSAGES``)."""
