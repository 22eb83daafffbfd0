"""Work-queue group members of one node, on the asyncio side (see :mod:`quicmesh.core.groups`).

The core decides which *node* takes a group message; this module hands it to one of the node's
local member subscriptions of that ``(group, pattern)``, round-robin, and reports back when the
application takes it (``core.group_taken``: the publisher's ack) or when it cannot be taken
here (a full queue, a subscription closed with it unread: ``core.group_released``, the publisher
redelivers it to another member). Each member subscription's queue holds at least
``pubsub.group_window`` messages (what one publisher may have in flight to this node); when
several publishers fill it, the overflow is given back, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..bounded import BoundedDict, ContainerRegistry, Overflow
from ..bounded.aio import BoundedQueue
from ..config import PubSubConfig
from ..core.groups import GroupDeliver
from ..core.node import NodeCore
from ..errors import ContainerFull, LimitExceeded, NodeClosed
from .message import Message

__all__ = ["LocalGroups"]

Key = tuple[str, str]


class LocalGroups:
    """The node's member subscriptions of work-queue groups."""

    def __init__(
        self,
        core: NodeCore,
        config: PubSubConfig,
        registry: ContainerRegistry,
        *,
        now: Callable[[], float],
        run: Callable[[Iterable[object]], None],
    ) -> None:
        self._core = core
        self._config = config
        self._registry = registry
        self._now = now
        self._run = run
        self.subs: BoundedDict[int, tuple[Key, BoundedQueue[Message]]] = BoundedDict(
            "node.group_subscriptions", config.max_subscriptions, registry=registry)
        """Subscription id -> its key and queue."""
        self._by_key: dict[Key, list[int]] = {}  # bounded: one per key of self.subs
        self._turn: dict[Key, int] = {}  # bounded: one per key of self.subs
        self.refused = 0
        """Group messages handed back because no local member could queue them."""

    def __contains__(self, sub_id: object) -> bool:
        return sub_id in self.subs

    def open(self, sub_id: int, pattern: str, group: str, queue_size: int | None) -> BoundedQueue[Message]:
        """Open member subscription ``sub_id`` (raises ``ValueError``, ``PermissionDenied``,
        ``LimitExceeded``)."""
        if len(self.subs) >= self.subs.capacity:
            raise LimitExceeded("pubsub.max_subscriptions", self.subs.capacity)
        size = max(queue_size or self._config.subscriber_queue_size, self._config.group_window)
        queue: BoundedQueue[Message] = BoundedQueue("node.group_queue", size, Overflow.DROP_NEWEST,
                                                    registry=self._registry)
        try:
            effects = self._core.group_join(group, pattern, self._now())
        except BaseException:
            queue.close()
            raise
        key = (group, pattern)
        self.subs[sub_id] = (key, queue)
        self._by_key.setdefault(key, []).append(sub_id)
        self._run(effects)
        return queue

    def deliver(self, eff: GroupDeliver) -> None:
        """Hand one group message to a local member (round-robin), or give it back."""
        key = (eff.group, eff.pattern)
        ids = self._by_key.get(key)
        msg = Message(eff.topic, eff.payload, eff.origin, eff.id)
        if ids:
            n = len(ids)
            start = self._turn.get(key, 0)
            for k in range(n):
                _, queue = self.subs[ids[(start + k) % n]]
                try:
                    ok = queue.put_nowait(msg)
                except ContainerFull:
                    ok = False
                if ok:
                    self._turn[key] = (start + k + 1) % n
                    return
        self.refused += 1
        self._run(self._core.group_released(eff.origin, eff.id, self._now()))

    def taken(self, msg: Message) -> None:
        """The application read ``msg`` from a member subscription: ack it."""
        self._run(self._core.group_taken(msg.sender, msg.seq, self._now()))

    def close(self, sub_id: int, *, stopping: bool = False) -> None:
        """Close member subscription ``sub_id``: messages it did not read go back to their
        publishers (redelivered to other members); the last local member withdraws."""
        entry = self.subs.pop(sub_id, None)
        if entry is None:
            return
        key, queue = entry
        ids = self._by_key.get(key, [])
        if sub_id in ids:
            ids.remove(sub_id)
        if not ids:
            self._by_key.pop(key, None)
            self._turn.pop(key, None)
        unread: list[Message] = []
        while len(queue):
            unread.append(queue.get_nowait())
        if stopping:
            queue.close_queue(NodeClosed("node stopped"))
            return
        queue.close()
        now = self._now()
        for msg in unread:
            self._run(self._core.group_released(msg.sender, msg.seq, now))
        self._run(self._core.group_leave(key[0], key[1], now))

    def close_all(self) -> None:
        """The node stops: end every member subscription (its publishers redeliver what is left
        when the connection goes)."""
        for sub_id in list(self.subs):
            self.close(sub_id, stopping=True)
