"""Shared by the Plumtree unit tests: node ids and a tree with three neighbours up."""

from __future__ import annotations

from random import Random

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GossipConfig
from quicmesh.core.plumtree import GossipCaches, Plumtree
from quicmesh.identity import KeyPair, NodeId


def nid(i: int, base: int = 2000) -> NodeId:
    """A stable node id (``base`` keeps two test modules' ids apart)."""
    return KeyPair.from_seed((i + base).to_bytes(32, "big")).node_id


ME, A, B, C = nid(0), nid(1), nid(2), nid(3)


def tree(registry: ContainerRegistry, cfg: GossipConfig | None = None) -> Plumtree:
    """``ME``'s Plumtree for swarm ``s`` with ``A``, ``B`` and ``C`` as eager neighbours at time 0."""
    cfg = cfg or GossipConfig()
    pt = Plumtree(ME, "s", cfg, GossipCaches(cfg, registry), Random(1), registry, max_message_size=1024)
    for p in (A, B, C):
        pt.neighbor_up(p, 0.0)
    return pt
