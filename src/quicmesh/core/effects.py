"""Effects: what a core state machine asks its driver (the runtime or the simulator) to do.

State machines never perform I/O. Their event handlers (``handle_message(peer, msg, now)``,
``handle_timer(now)``, ...) return a list of effects; the driver carries them out in order.
Timers are not effects: each machine exposes ``next_deadline() -> float | None`` and the driver
arms one timer for the earliest deadline of all machines (the shape of aioquic's
``get_timer()``/``handle_timer()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ..identity import NodeId
from .wire import Message

__all__ = ["Deliver", "DeliverBatch", "Dial", "DialAddress", "Disconnect", "Effect", "Send"]


class Send(msgspec.Struct, frozen=True, gc=False):
    """Send ``message`` to ``peer`` over its connection; dial first when not connected. (A frozen
    ``msgspec.Struct``, as :class:`Deliver`: one is made per message sent, #14.)"""

    peer: NodeId
    message: Message


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a connection to ``peer`` at one of ``addresses`` (tried in order)."""

    peer: NodeId
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DialAddress:
    """Open a connection to whoever listens at ``addresses`` (a bootstrap peer whose id is not
    known yet). The driver reports success with ``peer_connected(peer_id_learned, addresses,
    outbound=True, now)`` -- ``addresses`` must include the address dialled -- and failure with
    the state machine's ``address_dial_failed(addresses, now)``."""

    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection to ``peer``; ``reason`` is a short machine-readable code."""

    peer: NodeId
    reason: str


class Deliver(msgspec.Struct, frozen=True, gc=False):
    """Hand a topic message to the local subscriptions that match ``topic``. (A frozen
    ``msgspec.Struct``, not a dataclass: one is made per delivered message, ten times cheaper.)"""

    topic: str
    payload: bytes
    publisher: NodeId
    seq: int
    hops: int = 0


class DeliverBatch(msgspec.Struct, frozen=True, gc=False):
    """Hand a batch of topic messages of one publisher to the local subscriptions that match
    ``topic``: ``payloads[i]`` has sequence number ``seq + i``. One effect for a whole gossip
    batch, so a driver routes and queues the batch once instead of once per message; it means
    exactly what ``len(payloads)`` :class:`Deliver` effects in that order would (see
    :meth:`each`). ``size`` is the payload bytes plus a per-message overhead, for drivers that
    bound what they hold in bytes."""

    topic: str
    payloads: list[bytes]
    publisher: NodeId
    seq: int
    hops: int = 0
    size: int = 0

    def each(self) -> list[Deliver]:
        """The same deliveries as one :class:`Deliver` per message."""
        topic, publisher, seq, hops = self.topic, self.publisher, self.seq, self.hops
        return [Deliver(topic, payload, publisher, seq + i, hops) for i, payload in enumerate(self.payloads)]


DELIVERY_OVERHEAD = 64
"""Bytes counted per message on top of its payload in :attr:`DeliverBatch.size`."""

Effect = Send | Dial | DialAddress | Disconnect | Deliver | DeliverBatch
