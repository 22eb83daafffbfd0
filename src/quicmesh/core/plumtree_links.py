"""The links of a Plumtree broadcast tree: which neighbours are eager or lazy for each
publisher, and the tree optimisation and refresh that move them (see :mod:`quicmesh.core.plumtree`,
whose :class:`~quicmesh.core.plumtree.Plumtree` these methods are part of)."""

from __future__ import annotations

import zlib

from ..bounded import LruMap, TtlMap
from ..config import GossipConfig
from ..identity import NodeId
from .membership import HvSend
from .mesh_messages import MGraft, MPrune

__all__ = ["TreeLinks"]


class TreeLinks:
    """Per-publisher eager/lazy links of one swarm's tree, mixed into
    :class:`~quicmesh.core.plumtree.Plumtree` (which makes the containers)."""

    me: NodeId
    swarm: str
    config: GossipConfig
    eager: LruMap[NodeId, None]
    lazy: LruMap[NodeId, None]
    trees: LruMap[bytes, set[NodeId]]
    """Per publisher: the neighbours lazy for its messages."""
    tree_used: TtlMap[bytes, float]
    received_from: TtlMap[bytes, tuple[NodeId, int, bytes]]
    counters: dict[str, int]

    def _is_neighbour(self, peer: NodeId) -> bool:
        return peer in self.eager or peer in self.lazy

    def _neighbours(self) -> tuple[NodeId, ...]:
        return (*self.eager.keys(), *self.lazy.keys())

    def _lazy_for(self, publisher: bytes) -> set[NodeId]:
        lazy = self.trees.get(publisher)
        if lazy is None:
            lazy = set()  # bounded: swarm neighbours, at most params.MAX_NEIGHBOURS
            self.trees.set(publisher, lazy)
        return lazy

    def is_eager(self, peer: NodeId, publisher: bytes) -> bool:
        """Whether ``peer`` is a neighbour eager for ``publisher``'s messages."""
        lazy = self.trees.peek(publisher)
        return self._is_neighbour(peer) and (lazy is None or peer not in lazy)

    def _make_lazy(self, peer: NodeId, publisher: bytes | None) -> None:
        """``peer`` turns lazy in ``publisher``'s tree (None: in every tree)."""
        if publisher is None:
            for lazy in self.trees.values():
                lazy.add(peer)
        else:
            self._lazy_for(publisher).add(peer)
        self.eager.pop(peer)
        self.lazy.set(peer, None)

    def _make_eager(self, peer: NodeId, publisher: bytes | None) -> None:
        """``peer`` turns eager in ``publisher``'s tree (None: in every tree)."""
        if publisher is None:
            for lazy in self.trees.values():
                lazy.discard(peer)
        else:
            one = self.trees.peek(publisher)
            if one is not None:
                one.discard(peer)
        self.lazy.pop(peer)
        self.eager.set(peer, None)


    def _refresh(self, pub: bytes, now: float) -> list[HvSend]:
        """#14: once per ``gossip.tree_refresh`` (x 0.5-1.5 per publisher), ask the neighbours lazy for
        ``pub`` to push its next batch too (GRAFT without id): its first arrival re-picks the eager link."""
        due = self.tree_used.get(pub)
        if due is None or now < due:  # a new tree (_push starts its clock) or not due yet
            return []
        self.tree_used.set(pub, self._next_refresh(pub, now), now)
        lazy = self.trees.peek(pub)
        if not lazy:
            return []
        self.counters["tree_refreshes"] += 1
        out: list[HvSend] = []
        for p in [p for p in sorted(lazy) if self._is_neighbour(p)]:  # sorted: a set's order varies by process
            self._make_eager(p, pub)
            out.append(HvSend(p, MGraft(self.swarm, None, pub)))
        return out

    def _next_refresh(self, pub: bytes, now: float) -> float:
        # a factor fixed per (node, publisher): nodes refresh apart, and no random draw is taken
        return now + self.config.tree_refresh * (0.5 + zlib.crc32(self.me.raw + pub) / 2**32)

    def _optimise(self, announcer: NodeId, mid: bytes, hops: int) -> list[HvSend]:
        """``announcer`` (lazy) has ``mid`` at ``hops``: when that is at least the threshold
        shorter than the path it reached us by, swap the eager link for the announcer's."""
        got = self.received_from.get(mid)
        if got is None:
            return []
        via, got_hops, pub = got
        if hops + self.config.optimization_threshold > got_hops or via == announcer or self.is_eager(announcer, pub):
            return []
        self.received_from.pop(mid)
        return self._swap(announcer, via, pub)

    def _swap(self, nearer: NodeId, farther: NodeId, pub: bytes) -> list[HvSend]:
        """Make ``nearer`` the eager link for ``pub`` (GRAFT) and ``farther``, when eager, lazy (PRUNE)."""
        self.counters["optimisations"] += 1
        self._make_eager(nearer, pub)
        out = [HvSend(nearer, MGraft(self.swarm, None, pub))]
        if self.is_eager(farther, pub):
            self._make_lazy(farther, pub)
            self.counters["prunes_sent"] += 1
            out.append(HvSend(farther, MPrune(self.swarm, pub)))
        return out

