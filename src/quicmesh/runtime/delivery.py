"""The node's delivery queue: between the core's ``Deliver``/``DeliverBatch`` outputs and the
subscription queues, without loss.

Theory of operation
-------------------
Every delivery the core produces (a message, or a whole received gossip batch) waits in one
FIFO, :attr:`Delivery.outbox`, and is handed to the matching subscription queues
``CHUNK`` messages per event-loop iteration, so that readers get a turn between chunks. The
FIFO never drops in normal operation: it is *paced* instead.

- :attr:`Delivery.full` (``HIGH`` messages or ``HIGH_BYTES`` bytes waiting) tells the driver to
  stop taking messages out of its inbox; the inbox then fills, its guard pauses the connections
  that hold their share (:mod:`quicmesh.runtime.inbox`), and the back-pressure reaches the
  publishers through the transport (their ``publish()`` waits). A local ``publish`` waits on
  :meth:`Delivery.room` the same way. When the FIFO drains below ``HIGH // 2`` the driver's
  ``on_room`` callback resumes the inbox and wakes those publishers.
- The FIFO's hard capacity leaves room for what one inbox message can add past ``HIGH`` (a
  batch, or the reorder buffer releasing a gap); an overflow (a caller that keeps publishing
  without awaiting ``publish``) is still counted in :attr:`Delivery.dropped`
  (``delivery_dropped_total``).

Only a subscription's own queue drops, by its policy, counted in its ``dropped``. A subscription
with policy ``block`` registers its queue (:meth:`Delivery.add_block`): while it holds its
``soft`` limit of messages the FIFO stops in front of the next delivery for it (*stalled*) and
resumes when its reader takes (:meth:`Delivery.taken`, called by the subscription). A stall
lasts at most ``block_timeout`` seconds: then the queue is *overrun* (it behaves as
``drop_oldest``: the oldest messages are evicted, counted) until its reader drains it to half of
``soft``; a dead reader therefore never stalls the node for longer than ``block_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..bounded import BoundedDeque, ContainerRegistry, Overflow
from ..bounded.aio import BoundedQueue
from ..config import NodeConfig
from ..config.schema import MAX_BATCH_MESSAGES
from ..core.effects import DELIVERY_OVERHEAD, Deliver, DeliverBatch

__all__ = ["CHUNK", "HIGH", "HIGH_BYTES", "Delivery"]

CHUNK = 256
"""Messages handed to subscription queues per event-loop iteration (a batch counts whole)."""
HIGH = 8 * CHUNK
"""Messages waiting at which the driver stops taking from its inbox (and local publishers wait)."""
HIGH_BYTES = 8 * 1024 * 1024
"""Bytes waiting at which the same happens."""


def _size(eff: Deliver | DeliverBatch) -> int:
    return eff.size if isinstance(eff, DeliverBatch) else len(eff.payload) + DELIVERY_OVERHEAD


def _count(eff: Deliver | DeliverBatch) -> int:
    return len(eff.payloads) if isinstance(eff, DeliverBatch) else 1


@dataclass(slots=True)
class _Block:
    """A ``block``-policy subscription queue's state."""

    soft: int
    overrun: bool = False


class Delivery:
    """The paced delivery FIFO (see the module docstring). ``route(topic)`` returns the queues of
    the subscriptions matching ``topic``; ``deliver``/``deliver_batch`` put into them;
    ``on_room()`` runs when the FIFO drained below ``HIGH // 2`` after having been full."""

    def __init__(
        self, config: NodeConfig, registry: ContainerRegistry, *,
        route: Callable[[str], list[BoundedQueue[Any]]],
        deliver: Callable[[Deliver], None], deliver_batch: Callable[[DeliverBatch], None],
        on_room: Callable[[], None],
    ) -> None:
        self.outbox: BoundedDeque[Deliver | DeliverBatch] = BoundedDeque(
            "node.delivery_queue", config.gossip.reorder_buffer_total + HIGH + MAX_BATCH_MESSAGES,
            Overflow.DROP_NEWEST, capacity_bytes=config.gossip.payload_cache_bytes + HIGH_BYTES
            + 2 * config.transport.max_frame_size, sizeof=_size, registry=registry,
        )
        self._route = route
        self._deliver = deliver
        self._deliver_batch = deliver_batch
        self._on_room = on_room
        self._block_timeout = config.pubsub.subscriber_block_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped = False
        self.pending = 0
        """Messages waiting."""
        self.pending_bytes = 0
        self.full = False
        """Whether the FIFO holds ``HIGH`` messages or ``HIGH_BYTES`` bytes (or more). A plain
        attribute, set where ``pending`` changes, not a property: every ``publish`` reads it, and
        a property's call was a tenth of a 64 B publish's CPU (#14)."""
        self.dropped = 0
        """Deliveries refused by a full FIFO (only a caller publishing without awaiting gets here)."""
        self.stalls = 0
        """Times a ``block`` subscription's full queue held the FIFO."""
        self.block_timeouts = 0
        """Stalls that lasted ``subscriber_block_timeout`` (the queue then dropped its oldest)."""
        self._was_full = False
        self._scheduled = False
        self._blocks: dict[BoundedQueue[Any], _Block] = {}  # bounded: one per open block-policy subscription
        self._stalled: BoundedQueue[Any] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._room: asyncio.Future[None] | None = None
        self._inline = CHUNK
        """Messages that may still be delivered at once, without queueing. Renewed by
        :meth:`drain` (#14: not per loop iteration, which cost a callback per message delivered
        alone): spent, the next delivery waits for the drain of the next iteration, so one
        iteration still hands at most ``CHUNK`` at once and ``CHUNK`` from the FIFO."""

    def __len__(self) -> int:
        return len(self.outbox)

    def put(self, eff: Deliver | DeliverBatch) -> None:
        """Deliver ``eff`` now when nothing waits and the inline budget (``CHUNK`` between two
        drains) is not used up (a single message is not deferred to the next iteration); else queue it
        (counted in :attr:`dropped` if the hard capacity is reached)."""
        n = _count(eff)
        if not self.outbox and self._inline >= n and self._stalled is None and not self.stopped and (
                not self._blocks or self._holds(eff.topic) is None):
            self._inline -= n
            if isinstance(eff, DeliverBatch):
                self._deliver_batch(eff)
            else:
                self._deliver(eff)
            return
        if not self.outbox.append(eff):
            self.dropped += 1
            return
        self.pending += n
        self.pending_bytes += _size(eff)
        if self.pending >= HIGH or self.pending_bytes >= HIGH_BYTES:
            self.full = self._was_full = True
        self._schedule()

    async def room(self) -> None:
        """Wait until the FIFO is no longer :attr:`full`."""
        while self.full and not self.stopped:
            if self._room is None or self._room.done():
                assert self.loop is not None
                self._room = self.loop.create_future()
                self._was_full = True
            await self._room

    def add_block(self, queue: BoundedQueue[Any], soft: int) -> None:
        """``queue`` belongs to a ``block``-policy subscription of ``soft`` messages."""
        self._blocks[queue] = _Block(soft)

    def remove_block(self, queue: BoundedQueue[Any]) -> None:
        """``queue``'s subscription closed: it holds nothing up any more."""
        self._blocks.pop(queue, None)
        if self._stalled is queue:
            self._unstall()

    def taken(self, queue: BoundedQueue[Any]) -> None:
        """A reader took from ``queue``: a stall on it may end."""
        block = self._blocks.get(queue)
        if block is None:
            return
        n = len(queue)
        if block.overrun and n <= block.soft // 2:
            block.overrun = False
        if self._stalled is queue and n < block.soft:
            self._unstall()

    def _schedule(self) -> None:
        if not self._scheduled and self._stalled is None and self.loop is not None and not self.stopped:
            self._scheduled = True
            self.loop.call_soon(self.drain)

    def _unstall(self) -> None:
        self._stalled = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.outbox:
            self._schedule()

    def _stall_expired(self, queue: BoundedQueue[Any]) -> None:
        self._stall_timer = None
        block = self._blocks.get(queue)
        if block is not None:
            block.overrun = True
            self.block_timeouts += 1
        if self._stalled is queue:
            self._unstall()

    def _holds(self, topic: str) -> BoundedQueue[Any] | None:
        """A ``block`` queue matching ``topic`` that is full, or ``None``."""
        for queue in self._route(topic):
            block = self._blocks.get(queue)
            if block is not None and not block.overrun and len(queue) >= block.soft and not queue.closed:
                return queue
        return None

    def drain(self) -> None:
        """Hand up to ``CHUNK`` messages to the subscription queues (one loop iteration's turn)."""
        self._scheduled = False
        self._inline = CHUNK
        outbox = self.outbox
        budget = CHUNK
        blocks = self._blocks
        while outbox and budget > 0 and not self.stopped:
            eff = outbox.peekleft()
            if blocks:
                held = self._holds(eff.topic)
                if held is not None:
                    self._stalled = held
                    self.stalls += 1
                    if self.loop is not None:
                        self._stall_timer = self.loop.call_later(self._block_timeout, self._stall_expired, held)
                    break
            outbox.popleft()
            n = _count(eff)
            self.pending -= n
            self.pending_bytes -= _size(eff)
            self.full = self.pending >= HIGH or self.pending_bytes >= HIGH_BYTES
            budget -= n
            if isinstance(eff, DeliverBatch):
                self._deliver_batch(eff)
            else:
                self._deliver(eff)
        if self._stalled is None and outbox and not self.stopped:
            self._schedule()
        if self._was_full and self.pending < HIGH // 2 and self.pending_bytes < HIGH_BYTES // 2:
            self._was_full = False
            room, self._room = self._room, None
            if room is not None and not room.done():
                room.set_result(None)
            self._on_room()

    def stop(self) -> None:
        """The node stops: nothing more is delivered; waiters are released."""
        self.stopped = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
