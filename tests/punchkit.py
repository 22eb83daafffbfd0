"""Three :class:`~quicmesh.core.punch.Puncher`\\ s (initiator A, target B, common node K) wired
by a deterministic message pump, for the punch unit and security tests."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from random import Random

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import PunchConfig
from quicmesh.core.effects import Send
from quicmesh.core.mesh_messages import SelfRecord
from quicmesh.core.punch import Puncher
from quicmesh.core.selfrecord import sign_record
from quicmesh.identity import KeyPair, NodeId

REALM = "punch-test"
WALL = 1_800_000_000.0
"""Wall clock at ``now == 0`` (seconds)."""


@dataclass
class Peer:
    """One node of the harness: its key, record, puncher and what it may see."""

    key: KeyPair
    record: SelfRecord
    puncher: Puncher
    links: set[NodeId] = field(default_factory=set)
    members: set[NodeId] | None = None

    @property
    def id(self) -> NodeId:
        return self.key.node_id


def make_peer(seed: int, addrs: list[str], config: PunchConfig | None = None, *, members: set[NodeId] | None = None,
              rng_seed: int = 1) -> Peer:
    """A node with key ``seed`` whose own record lists ``addrs``."""
    key = KeyPair.from_seed(bytes([seed]) * 32)
    rec = sign_record(key, REALM, addrs, 1)
    holder: list[Peer] = []

    def connected(p: NodeId) -> bool:
        return p in holder[0].links

    def member(p: NodeId, now: float) -> bool:
        m = holder[0].members
        return m is None or p in m

    puncher = Puncher(key, REALM, config or PunchConfig(), Random(rng_seed), ContainerRegistry(f"p{seed}"),
                      wall=lambda now: WALL + now, own_record=lambda: holder[0].record, connected=connected,
                      member=member)
    peer = Peer(key, rec, puncher, members=members)
    holder.append(peer)
    return peer


def trio(config: PunchConfig | None = None, *, a_smaller: bool = True) -> tuple[Peer, Peer, Peer]:
    """A (behind NAT 1), B (behind NAT 2), K (public), K connected to both; A's id is the smaller
    one when ``a_smaller``."""
    x = make_peer(1, ["10.2.0.2:7000", "10.1.0.2:40001"], config, rng_seed=11)
    y = make_peer(2, ["10.3.0.2:7000", "10.1.0.3:40002"], config, rng_seed=12)
    a, b = (x, y) if (x.id < y.id) == a_smaller else (y, x)
    k = make_peer(3, ["10.1.0.1:7000"], config, rng_seed=13)
    k.links |= {a.id, b.id}
    a.links.add(k.id)
    b.links.add(k.id)
    return a, b, k


class Pump:
    """Delivers ``Send`` outputs between peers after ``latency`` seconds each; collects the rest."""

    def __init__(self, peers: list[Peer], latency: float = 0.01) -> None:
        self.peers = {p.id: p for p in peers}
        self.latency = latency
        self.queue: list[tuple[float, NodeId, NodeId, object]] = []  # (at, from, to, message)
        self.other: list[tuple[float, NodeId, object]] = []  # (at, node, output)
        self.sent = 0

    def take(self, node: Peer, outs: list[object], now: float) -> None:
        for o in outs:
            if isinstance(o, Send):
                self.sent += 1
                self.queue.append((now + self.latency, node.id, o.peer, o.message))
            else:
                self.other.append((now, node.id, o))

    def run(self, until: float, now: float = 0.0) -> float:
        """Deliver messages and fire timers in time order up to ``until``; returns the time."""
        while True:
            nxt: list[tuple[float, int]] = []
            if self.queue:
                nxt.append((min(q[0] for q in self.queue), 0))
            for p in self.peers.values():
                d = p.puncher.next_deadline()
                if d is not None:
                    nxt.append((d, 1))
            if not nxt:
                return until
            at, kind = min(nxt)
            if at > until:
                return until
            now = max(now, at)
            if kind == 0:
                item = min(self.queue, key=lambda q: q[0])
                self.queue.remove(item)
                _, frm, to, msg = item
                peer = self.peers.get(to)
                if peer is not None and frm in peer.links:
                    self.take(peer, peer.puncher.handle(frm, msg, now), now)  # type: ignore[arg-type]
            else:
                for p in self.peers.values():
                    d = p.puncher.next_deadline()
                    if d is not None and d <= now:
                        self.take(p, p.puncher.timer(now), now)

    def outputs(self, node: Peer, kind: type) -> list[tuple[float, object]]:
        return [(at, o) for at, n, o in self.other if n == node.id and isinstance(o, kind)]


def config(**kw: object) -> PunchConfig:
    """``PunchConfig`` with ``kw`` changed."""
    return replace(PunchConfig(), **kw)  # type: ignore[arg-type]
