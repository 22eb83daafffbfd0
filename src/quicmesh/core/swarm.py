"""One joined topic swarm, as the mesh holds it (see :mod:`quicmesh.core.mesh`)."""

from __future__ import annotations

from ..bounded import Watch
from .membership import HyParView
from .plumtree import Plumtree
from .topics import Pattern

__all__ = ["Swarm"]


class Swarm:
    """One joined swarm: its overlay (``hv``), its broadcast tree (``pt``), its local patterns,
    the schedule of its discovery walks, its publisher ``epoch`` and ``next_seq``, and its open
    batch of local publishes (``batch*``, see :mod:`quicmesh.core.batching`)."""

    __slots__ = ("batch", "batch_bytes", "batch_seq", "batch_topic", "deadline", "epoch", "find_interval", "hv",
                 "joined_at", "last_publish", "next_find", "next_seq", "patterns", "pt", "watch")

    def __init__(self, hv: HyParView, pt: Plumtree, epoch: int, now: float) -> None:
        self.hv = hv
        self.pt = pt
        self.watch = Watch()
        """Marked by ``hv`` and ``pt`` where their timer state changes (the mesh recomputes
        :attr:`deadline` only then)."""
        self.deadline = float("inf")
        """The earliest of ``hv.next_deadline()`` and ``pt.timer_deadline()`` when :attr:`watch`
        was last clean (``inf``: none)."""
        hv.watch(self.watch)
        pt.watch(self.watch)
        self.patterns: dict[str, Pattern] = {}  # bounded: subset of Mesh.patterns (max_subscriptions)
        self.epoch = epoch
        self.next_seq = 0
        self.next_find = now
        self.joined_at = now
        """When this node joined the swarm."""
        self.find_interval = 1.0
        self.last_publish = -1e18
        self.batch: list[bytes] = []  # bounded: flushed at gossip.batch_max_messages / _bytes
        self.batch_topic = ""
        self.batch_seq = 0
        self.batch_bytes = 0
