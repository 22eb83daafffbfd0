"""Publishing: per-swarm numbering and batches of local publishes, sent as one ``MGossip`` each.

Theory of operation
-------------------
``publish`` numbers the message (per swarm ``seq``), delivers it to local matching patterns at
once, and appends it to the swarm's open *batch*; nothing is sent yet. ``flush`` (and the mesh's
``handle_timer``, since its ``next_deadline`` reports an open batch as due at once) sends every
open batch as one :class:`~quicmesh.core.mesh_messages.MGossip` down the swarm's broadcast tree.
A batch closes early when the next publish goes to another topic of the swarm, or it reaches
``gossip.batch_max_messages`` messages or ``gossip.batch_max_bytes`` bytes. The runtime flushes at
the end of each event-loop iteration, so a lone publish leaves at once while a burst travels
``batch_max_messages`` to a frame; the simulator flushes after every publish. A batch is signed
once, when it is sent (the mesh's ``auth``: :meth:`~quicmesh.core.guard.Guard.sign_gossip`).

**The short path.** While a swarm with no local subscription has an open batch, a publish to the
batch's topic only appends to it (:meth:`Batching.append_to_batch`: no clock, no topic check, no
effects); everything else takes the general path. The published counter and the swarm's
``last_publish`` are updated when the batch is flushed.

:class:`Batching` is a mixin of :class:`~quicmesh.core.mesh.Mesh` rather than an object the mesh
calls, because ``append_to_batch`` is the hottest call of a publishing node: a delegation would
add a call to every publish. What it needs from the mesh is declared below (``me``, ``counters``,
``max_message_size``, :meth:`Batching._ensure_swarm`, :meth:`Batching._route`); the state it owns
is ``batched``, ``batch_max``, ``batch_max_bytes`` and the short-path swarm ``_hot``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..bounded import LruMap
from ..config import GossipConfig
from ..errors import MessageTooLarge
from ..identity import NodeId
from .effects import Deliver, Effect
from .membership import HvOut
from .mesh_messages import MGossip
from .plumtree import ID_LEN, GossipAuth, batch_digest
from .swarm import Swarm
from .topics import check_topic, swarm_of

__all__ = ["Batching"]


class Batching:
    """Local publishes and their batches; mixed into :class:`~quicmesh.core.mesh.Mesh`."""

    # provided by the mesh
    me: NodeId
    auth: GossipAuth | None
    counters: dict[str, int]
    max_message_size: int
    swarms: LruMap[str, Swarm]

    def _ensure_swarm(self, key: str, now: float) -> tuple[Swarm, list[Effect]]:
        """The joined swarm ``key``, joining it (as a publisher) when needed."""
        raise NotImplementedError

    def _route(self, swarm: str, outs: Sequence[HvOut], now: float) -> list[Effect]:
        """Carry out overlay outputs of ``swarm`` (``""``: the realm) as effects."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------------

    def _init_batches(self, config: GossipConfig) -> None:
        self.batched: dict[str, float] = {}  # bounded: a subset of swarms (gossip.max_topics)
        """Swarms with an open batch -> when its first message was published."""
        self.batch_max = config.batch_max_messages
        self.batch_max_bytes = config.batch_max_bytes
        self._hot: Swarm | None = None
        """The swarm whose open batch the last publish joined, while it has no local pattern: the
        next publish to the same topic takes the short path (see :meth:`append_to_batch`)."""
        self._hot_bytes = min(self.batch_max_bytes, self.max_message_size)

    # -- API -------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, now: float) -> list[Effect]:
        """Publish ``payload`` on ``topic``: local matching subscriptions get a Deliver at once;
        the message joins the swarm's open batch, sent by :meth:`flush` (or earlier when the batch
        closes; see :mod:`quicmesh.core.batching`).

        Raises :class:`MessageTooLarge` over ``pubsub.max_message_size`` and ``ValueError`` for a
        bad topic."""
        if self.append_to_batch(topic, payload):
            return []
        check_topic(topic)
        if len(payload) > self.max_message_size:
            raise MessageTooLarge(len(payload), self.max_message_size)
        sw, out = self._ensure_swarm(swarm_of(topic), now)
        sw.last_publish = now
        if sw.batch and (sw.batch_topic != topic or len(sw.batch) >= self.batch_max
                         or sw.batch_bytes + len(payload) > self.batch_max_bytes):
            out += self._flush_swarm(sw, now)
        if not sw.batch:
            sw.batch_topic = topic
            sw.batch_seq = sw.next_seq
            self.batched.setdefault(sw.hv.swarm, now)
        payload = bytes(payload)
        self._hot = None if sw.patterns or topic[:1] == "$" else sw  # reserved topics: never short
        sw.batch.append(payload)
        sw.batch_bytes += len(payload)
        seq = sw.next_seq
        sw.next_seq += 1
        if sw.patterns and sw.wants(topic):
            out.append(Deliver(topic, payload, self.me, seq, 0))
            self.counters["delivered"] += 1
        return out

    def append_to_batch(self, topic: str, payload: bytes) -> bool:
        """The short path of :meth:`publish`, for the common case of a burst: add ``payload`` to
        the open batch if that batch is for ``topic``, in a swarm with no local subscription, and
        has room; ``False`` (nothing done) otherwise. No clock is needed: the topic was checked
        when the batch opened, ``_hot_bytes`` bounds each message's size too, and the swarm's
        ``last_publish`` and the published counter are brought up to date at the flush."""
        sw = self._hot
        if sw is not None and topic == sw.batch_topic:
            batch = sw.batch
            size = sw.batch_bytes + len(payload)
            if len(batch) < self.batch_max and size <= self._hot_bytes:
                batch.append(payload)
                sw.batch_bytes = size
                sw.next_seq += 1
                return True
        return False

    @property
    def has_batches(self) -> bool:
        """Whether some local publishes wait in an open batch (see :meth:`flush`)."""
        return bool(self.batched)

    def flush(self, now: float) -> list[Effect]:
        """Send every open batch of local publishes (see :mod:`quicmesh.core.batching`)."""
        out: list[Effect] = []
        if not self.batched:
            return out
        keys = list(self.batched)
        self.batched.clear()
        for key in keys:
            sw = self.swarms.peek(key)
            if sw is not None:
                out += self._flush_swarm(sw, now)
        return out

    # -- for the mesh ----------------------------------------------------------------------------

    def _flush_swarm(self, sw: Swarm, now: float) -> list[Effect]:
        """Send ``sw``'s open batch, if any, down its broadcast tree."""
        if not sw.batch:
            return []
        msg = MGossip(sw.hv.swarm, sw.batch_topic, self.me.raw, sw.epoch, sw.batch_seq, sw.batch, 0)
        mid: bytes | None = None
        if self.auth is not None:  # one signature per batch, over the digest its id comes from
            digest = batch_digest(msg.publisher, msg.epoch, msg.seq, msg.topic, msg.payloads)
            msg.sig, msg.cert = self.auth.sign_gossip(digest)
            mid = digest[:ID_LEN]
        self.counters["published"] += len(sw.batch)
        sw.last_publish = max(sw.last_publish, now)
        if self._hot is sw:
            self._hot = None
        sw.batch = []
        sw.batch_bytes = 0
        self.batched.pop(sw.hv.swarm, None)
        return self._route(sw.hv.swarm, list(sw.pt.broadcast(msg, now, mid)), now)

    def _no_short_path(self, sw: Swarm) -> None:
        """``sw`` got a local pattern or is being left: publishes to it take the general path."""
        if self._hot is sw:
            self._hot = None
