"""The simulated network: latency, loss, duplication and reachability (partitions, one-way cuts).

It decides *whether* and *when* a message or a dial gets through; :mod:`quicmesh.testing.sim`
owns the clock and the nodes. All randomness comes from the ``Random`` passed in, so a run is
reproducible from its seed.

Loss models (``NetworkParams.loss_mode``), each transmission being lost with probability
``loss``:

* ``"retransmit"`` (default, what QUIC streams do): a lost transmission is sent again after a
  probe timeout (3 x the link's RTT + 25 ms, doubling on each further loss). Messages on one
  connection keep their order, so a loss also delays the messages behind it (head-of-line
  blocking). Nothing is lost while the connection lives; GRAFT timers fire on the delays.
* ``"drop_gossip"``: Plumtree messages (payloads, IHAVE, GRAFT, PRUNE) are dropped outright, as
  if sent as QUIC datagrams; membership messages are retransmitted. Exercises Plumtree's own
  repair (GRAFT from IHAVEs and re-announcements).
* ``"drop"``: every message may be dropped. HyParView assumes reliable links (the paper runs
  over TCP); under this model views can become asymmetric and small islands can form, which
  the periodic view sync and reconnection only partly repair.

``duplicate`` is the probability that a message is delivered twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random

__all__ = ["Latency", "NetworkParams", "Reachability"]


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way latency. Each link (node pair) gets a stable base latency drawn from a log-normal
    around ``median`` seconds (spread ``sigma``), clipped to [``low``, ``high``]; each message adds
    a uniform jitter of up to ``jitter`` times the base."""

    median: float = 0.010
    sigma: float = 0.5
    low: float = 0.001
    high: float = 0.500
    jitter: float = 0.1

    def sample(self, rng: Random) -> float:
        """One latency sample (seconds), for an unspecified link."""
        v = self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        return min(max(v, self.low), self.high)

    def base(self, seed: int, a: int, b: int) -> float:
        """The stable base latency of the link between node indices ``a`` and ``b``."""
        lo, hi = (a, b) if a <= b else (b, a)
        return self.sample(Random(f"link/{seed}/{lo}/{hi}"))

    def link(self, base: float, rng: Random) -> float:
        """One message's latency on a link with ``base`` latency."""
        return base * (1.0 + self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """Knobs of the simulated network."""

    latency: Latency = Latency()
    loss: float = 0.0
    """Probability that one transmission is lost (see ``loss_mode``)."""
    loss_mode: str = "retransmit"
    """``"retransmit"``, ``"drop_gossip"`` or ``"drop"`` (see the module docstring)."""
    duplicate: float = 0.0
    """Probability that one message is delivered twice."""
    dial_timeout: float = 2.0
    """Seconds before a dial to an unreachable or dead node is reported failed."""
    idle_timeout: float = 10.0
    """Seconds before a connection whose path is cut (or whose peer crashed) is reported lost."""
    bytes_per_second: float = 0.0
    """Link bandwidth, 0 for unlimited (adds size/bandwidth to the latency)."""


class Reachability:
    """Which node can reach which: nodes carry a group label; ``(a, b)`` in ``blocked`` means group
    ``a`` cannot send to group ``b`` (one-way cuts are single pairs)."""

    def __init__(self) -> None:
        self.group: dict[int, int] = {}  # bounded: one entry per simulated node
        self.blocked: set[tuple[int, int]] = set()  # bounded: pairs of group labels

    def can_send(self, a: int, b: int) -> bool:
        """Whether node index ``a`` can send to node index ``b``."""
        if not self.blocked:
            return True
        return (self.group.get(a, 0), self.group.get(b, 0)) not in self.blocked

    def partition(self, groups: list[list[int]], *, one_way: bool = False) -> None:
        """Split nodes into ``groups``; every pair of groups is cut (only group i -> j with i < j
        when ``one_way``)."""
        self.group = {}
        for label, members in enumerate(groups):
            for n in members:
                self.group[n] = label
        self.blocked = set()
        for i in range(len(groups)):
            for j in range(len(groups)):
                if i != j and (not one_way or i < j):
                    self.blocked.add((i, j))

    def heal(self) -> None:
        """Remove every cut."""
        self.group = {}
        self.blocked = set()
