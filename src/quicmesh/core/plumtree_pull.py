"""Repairs of a Plumtree broadcast tree that the ordering asks about: whether announced messages
are being repaired, and pulls by sequence number (#14). Mixed into
:class:`~quicmesh.core.plumtree.Plumtree` (which makes the containers and answers GRAFTs).

Theory of operation
-------------------
The ordering (:class:`~quicmesh.core.topics.Ordering`) holds a gap past its first wait only while
the swarm's tree repairs something (:meth:`Repairs.repairing`), and asks for the gap itself
(:meth:`Repairs.pull`). A *pull* is an ``MGraft`` naming a publisher, its epoch, the first missing
seq and the count, with no id. It goes to every swarm neighbour with the next IHAVE flush (due at
once). A neighbour looks the seq up in its payload cache's index by (publisher, epoch, swarm,
first seq) and answers with the batch that starts there and those that follow it inside the
gap, at most ``PULL_BATCHES``, as repairs (a duplicate prunes nothing), at most once per batch
and peer per ``GRAFT_ANSWER_INTERVAL``; a batch whose signature was deferred is checked first.
It answers nothing when it has nothing, and a pull changes no tree. A node of an earlier release
takes a pull for a graft of the publisher's tree. Why: under outright drops a node may hear
nothing of a message (its payload, its IHAVEs and their re-announcements all lost), or every
GRAFT for it may fail; a neighbour still caches it (20 % gossip drop: one message in 50,000 lost
at one node in three of nine seeds, none with pulls).
"""

from __future__ import annotations

from ..bounded import BoundedDeque, TtlMap
from ..identity import NodeId
from . import plumtree_params as params
from .gossip_caches import GossipCaches
from .membership import HvSend
from .mesh_messages import MGossip, MGraft

__all__ = ["Repairs"]


class Repairs:
    """Repair state the ordering asks about, and pulls; mixed into
    :class:`~quicmesh.core.plumtree.Plumtree`."""

    swarm: str
    caches: GossipCaches
    counters: dict[str, int]
    missing: TtlMap[bytes, tuple[tuple[NodeId, int], ...]]
    graft_tries: TtlMap[bytes, int]
    answered: TtlMap[tuple[bytes, NodeId], None]
    pulls: BoundedDeque[tuple[NodeId, MGraft]]
    ihave_deadline: float | None

    def _neighbours(self) -> tuple[NodeId, ...]:
        raise NotImplementedError

    def _repair(self, cached: MGossip) -> MGossip:
        raise NotImplementedError

    def _check_deferred(self, mid: bytes, cached: MGossip, now: float) -> bool:
        raise NotImplementedError

    def repairing(self, fresh: bool) -> bool:
        """Whether a message announced to this swarm but still missing is being repaired: a GRAFT
        for it is out, or (``fresh``) it was announced and is not grafted yet. An id announced and
        not yet grafted is most often a payload a few milliseconds behind its IHAVE (#14: while
        the trees re-formed after a heal, with four other publishers busy, 10-30 % of the nodes
        had such an id at any moment, and a gap nobody could fill was held 9 s instead of 3), so
        it counts only where a gap is first judged (the ordering's ``first``); by the next check
        it has been grafted if it is really missing."""
        missing = self.missing
        if fresh or not missing:
            return bool(missing)
        return any(mid in missing for mid in self.graft_tries.keys())

    def pull(self, publisher: bytes, epoch: int, seq: int, count: int, now: float) -> bool:
        """Ask every neighbour for ``publisher``'s batches of ``epoch`` that start in the ``count``
        messages from ``seq`` (a pull: see :class:`MGraft`), for an ordering gap that no repair
        fills (#14). Sent with the next IHAVE flush, due at once; ``False`` when there is no
        neighbour to ask."""
        peers = self._neighbours()
        for p in peers:
            self.pulls.append((p, MGraft(self.swarm, None, publisher, epoch, seq, count)))
        if peers:
            self.counters["pulls_sent"] += len(peers)
            self.ihave_deadline = now
        return bool(peers)

    def _on_pull(self, sender: NodeId, publisher: bytes, epoch: int, seq: int, count: int,
                 now: float) -> list[HvSend]:
        out: list[HvSend] = []
        end = seq + count
        for _ in range(params.PULL_BATCHES):
            found = None if seq >= end else self.caches.by_seq(publisher, epoch, self.swarm, seq)
            if found is None:
                break
            mid, cached = found
            if mid in self.caches.unchecked and not self._check_deferred(mid, cached, now):
                break
            seq += len(cached.payloads)
            key = (mid, sender)
            answered = self.answered.deadline(key)
            if answered is None or answered <= now:
                self.answered.set(key, None, now)
                out.append(HvSend(sender, self._repair(cached)))
        self.counters["pulls_answered"] += len(out)
        self.counters["payloads_sent"] += len(out)
        return out
