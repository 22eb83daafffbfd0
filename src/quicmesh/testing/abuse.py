"""Simulator scenarios of abuse and churn: a flood at many times capacity, everyone
unsubscribing, and thousands of identities coming and going (every container stays bounded and
per-topic state returns to zero)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from random import Random
from typing import Any

from ..config import AddressBookConfig, GossipConfig, MembershipConfig, NodeConfig, TransportConfig
from ..core.guard import gossip_signing_bytes
from ..core.mesh import HINT_TTL, PUBLISH_LINGER
from ..core.mesh_messages import MForwardJoin, MGossip, MIHave, MShuffle, PeerInfo
from ..core.plumtree import batch_digest
from ..errors import LimitExceeded
from ..identity import NodeId
from .network import Latency, NetworkParams
from .report import Report, _sim, build_overlay, container_peaks
from .sim import SimNode, Simulator, node_identity, node_keypair

__all__ = ["FloodScenario", "IdentityChurnScenario", "UnsubscribeScenario", "flood_config", "run_flood",
           "run_identity_churn", "run_unsubscribe"]

SWARM = "news"
TOPIC = "news.sport"


@dataclass(frozen=True)
class FloodScenario:
    """One node flooded by a connected attacker with 10x the capacity of each of its containers
    (small capacities, so the flood is quick): peers, gossip ids, publishers, IHAVEs, dials,
    connections, topics."""

    name: str = "flood"
    seed: int = 1
    factor: int = 10


def flood_config() -> NodeConfig:
    """The small-capacity configuration the flood scenario uses."""
    return NodeConfig(
        transport=TransportConfig(max_connections=50),
        address_book=AddressBookConfig(capacity=200),
        membership=MembershipConfig(),
        gossip=GossipConfig(seen_capacity=500, payload_cache_capacity=100, payload_cache_bytes=64 * 1024,
                            dial_queue_capacity=16, reorder_window=16, max_publishers=100, max_topics=20),
    )


def run_flood(sc: FloodScenario) -> Report:
    """Run a :class:`FloodScenario`."""
    cfg = flood_config()
    sim = Simulator(sc.seed, cfg)
    victim, attacker = sim.add_node(), sim.add_node()
    sim.join(attacker, [])
    sim.join(victim, [attacker])
    sim.run_for(2.0)
    sim.subscribe(victim, "news.>")
    sim.run_for(1.0)
    m = victim.mesh
    now = sim.now
    f = sc.factor
    rng = Random(f"flood/{sc.seed}")
    fake = iter(range(1_000_000, 10_000_000))

    def fid() -> NodeId:
        return node_identity(sc.seed, next(fake))

    # make the attacker a swarm neighbour so its gossip is accepted
    victim_apply = sim._apply
    victim_apply(victim, victim.core.message(attacker.id, _join("news", attacker), now))
    counts: dict[str, int] = {}
    # 1. peers: shuffles announcing 10x the address book capacity
    n_peers = f * cfg.address_book.capacity
    for i in range(0, n_peers, 16):
        peers = [PeerInfo(fid().raw, [f"flood:{i + j}"]) for j in range(16)]
        victim_apply(victim, victim.core.message(attacker.id, MShuffle("", attacker.id.raw, ["sim:1"], 0, peers), now))
    counts["peers_announced"] = n_peers
    # 2. gossip: 10x the seen cache, from 10x max_publishers publishers, with gaps in seq
    n_msgs = f * cfg.gossip.seen_capacity
    pubs = [node_keypair(sc.seed, next(fake)) for _ in range(f * cfg.gossip.max_publishers)]
    for i in range(n_msgs):
        pub = pubs[i % len(pubs)]
        seq = rng.randrange(1000)
        digest = batch_digest(pub.node_id.raw, 1, seq, "news.flood", [b"p" * 200])
        sig = pub.sign(gossip_signing_bytes(victim.core.trust.wire_id, digest))  # validly signed: it fills caches
        msg = MGossip("news", "news.flood", pub.node_id.raw, 1, seq, [b"p" * 200], 1, sig)
        victim_apply(victim, victim.core.message(attacker.id, msg, now + i * 1e-4))
    counts["gossip_sent"] = n_msgs
    now = sim.now + n_msgs * 1e-4
    # 3. IHAVE for 10x the missing-table capacity of unknown ids
    n_ids = f * cfg.gossip.payload_cache_capacity
    for _ in range(0, n_ids, 100):
        ids = [rng.getrandbits(128).to_bytes(16, "big") for _ in range(100)]
        victim_apply(victim, victim.core.message(attacker.id, MIHave("news", ids, [1] * 100), now))
    counts["ihave_ids"] = n_ids
    # 4. forward joins of 10x MAX-connection unreachable peers into the realm and the swarm
    n_joins = f * cfg.transport.max_connections
    for i in range(n_joins):
        p = fid()
        for s in ("", "news"):
            fj = MForwardJoin(s, p.raw, [f"unreachable:{i}"], 0)
            victim_apply(victim, victim.core.message(attacker.id, fj, now))
    counts["forward_joins"] = 2 * n_joins
    # 5. publishes queued towards dialling swarm neighbours: 10x the dial queue
    for i in range(f * cfg.gossip.dial_queue_capacity):
        sim.publish(victim, "news.local", b"q%d" % i)
    # 6. inbound connections: 10x max_connections
    refused = 0
    for _ in range(f * cfg.transport.max_connections):
        effs = m.peer_connected(fid(), (), False, now)
        refused += sum(1 for e in effs if getattr(e, "reason", "") == "max_connections")
    counts["connections_refused"] = refused
    # 7. topics: 10x max_topics
    limit_hits = 0
    for i in range(f * cfg.gossip.max_topics):
        try:
            sim.subscribe(victim, f"t{i}.x")
        except LimitExceeded:
            limit_hits += 1
    counts["topic_limit_hits"] = limit_hits
    peaks = container_peaks([victim])
    sim.run_for(120.0)
    container_peaks([victim], peaks)
    report = Report(sc.name, sc.seed)
    report.figures = {**counts, "dial_queue_dropped": m.counters["dial_queue_dropped"],
                      "ordering_gaps": m.ordering.counters["gaps"], "ordering_late": m.ordering.counters["late"],
                      "address_book_size": len(m.book), "seen_ids": len(m.caches.seen)}
    report.containers = peaks
    return report


def _join(swarm: str, node: SimNode) -> Any:
    from ..core.mesh_messages import MJoin

    return MJoin(swarm, [node.address])


# -- everyone unsubscribes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UnsubscribeScenario:
    """Every node subscribes (some patterns twice), traffic flows, then every reference is
    dropped: every node must hold zero per-topic state, at once where it only subscribed, and
    ``PUBLISH_LINGER`` after its last publish where it published too (it stays a publisher until
    then)."""

    name: str = "unsubscribe"
    seed: int = 1
    nodes: int = 60
    messages: int = 200


def run_unsubscribe(sc: UnsubscribeScenario) -> Report:
    """Run an :class:`UnsubscribeScenario`."""
    sim = _sim(sc.seed, NodeConfig(), 0.010)
    nodes = build_overlay(sim, sc.nodes)
    sim.run_for(10.0)
    subs: list[tuple[SimNode, str]] = []
    for i, n in enumerate(nodes):
        pats = ["news.>"] + (["news.sport"] if i % 2 else []) + (["news.>"] if i % 3 == 0 else [])
        for p in pats:
            sim.subscribe(n, p)
            subs.append((n, p))
    sim.run_for(10.0)
    for k in range(sc.messages):
        sim.at(sim.now + k * 0.02, partial(sim.publish, nodes[k % 7], TOPIC, b"%d" % k))
    sim.run_for(sc.messages * 0.02 + 5.0)
    state_before = sum(n.mesh.topic_state(SWARM) for n in nodes)
    rng = Random(f"unsub/{sc.seed}")
    t = sim.now
    for n, p in subs:
        sim.at(t + rng.random() * 2.0, partial(sim.unsubscribe, n, p))
    sim.run_for(10.0)
    publishers = {nodes[k % 7].id for k in range(sc.messages)}
    state_unsubscribed = sum(n.mesh.topic_state(SWARM) for n in nodes if n.id not in publishers)
    kept = sum(1 for n in nodes if n.mesh.swarms.peek(SWARM) is not None)
    sim.run_for(PUBLISH_LINGER)
    state_after = sum(n.mesh.topic_state(SWARM) for n in nodes)
    swarm_containers = sum(
        1 for n in nodes for c in n.registry if c.name.startswith(("swarm.", "plumtree."))
    )
    hints_after_leave = sum(len(n.mesh.hints) for n in nodes)
    sim.run_for(HINT_TTL + 10.0)
    report = Report(sc.name, sc.seed)
    report.figures = {
        "topic_state_before": state_before,
        "topic_state_after_unsubscribe_not_publishers": state_unsubscribed,
        "publishers_kept": kept,
        "publishers": len(publishers),
        "topic_state_after": state_after,
        "swarm_containers_after": swarm_containers,
        "swarms_after": sum(len(n.mesh.swarms) for n in nodes),
        "hints_after_leave": hints_after_leave,
        "hints_after_ttl": sum(len(n.mesh.hints) for n in nodes),
    }
    report.containers = container_peaks(nodes)
    return report


# -- identity churn against one long-lived node ------------------------------------------------------


@dataclass(frozen=True)
class IdentityChurnScenario:
    """``cycles`` fresh identities each join through one long-lived node, stay a few seconds
    (every ``publish_every``-th subscribes and publishes) and leave (gracefully or by crashing)."""

    name: str = "identity_churn"
    seed: int = 1
    cycles: int = 10_000
    interval: float = 0.05
    stay: float = 2.0
    publish_every: int = 20
    book_capacity: int = 2_000


def run_identity_churn(sc: IdentityChurnScenario) -> Report:
    """Run an :class:`IdentityChurnScenario`."""
    cfg = NodeConfig(address_book=AddressBookConfig(capacity=sc.book_capacity))
    sim = Simulator(sc.seed, cfg, NetworkParams(latency=Latency(median=0.005)), record_deliveries=False)
    stable = build_overlay(sim, 5)
    sim.run_for(5.0)
    for n in stable:
        sim.subscribe(n, "news.>")
    sim.run_for(5.0)
    hub = stable[0]
    rng = Random(f"ichurn/{sc.seed}")
    peaks: dict[str, tuple[int, int]] = {}

    def cycle(i: int) -> None:
        n = sim.add_node()
        sim.join(n, [hub])
        if i % sc.publish_every == 0:
            sim.subscribe(n, "news.>")
            sim.at(sim.now + 1.5, lambda: sim.publish(n, TOPIC, b"hello") if n.alive else None)
        stay = sc.stay * (0.5 + rng.random())
        if i % 2:
            sim.at(sim.now + stay, lambda: _graceful(sim, n))
        else:
            sim.at(sim.now + stay, lambda: sim.retire(n))
        if i % 500 == 0:
            container_peaks([hub], peaks)

    t0 = sim.now
    for i in range(sc.cycles):
        sim.at(t0 + i * sc.interval, partial(cycle, i))
    sim.run_until(t0 + sc.cycles * sc.interval + 2 * sc.stay)
    container_peaks([hub], peaks)
    during = hub.mesh.stats()
    sim.run_for(60.0)
    m = hub.mesh
    report = Report(sc.name, sc.seed)
    report.figures = {
        "cycles": sc.cycles,
        "address_book_size": len(m.book),
        "address_book_capacity": sc.book_capacity,
        "address_book_evictions": m.book.stats()["evictions"],
        "realm_active": len(m.realm.active),
        "realm_passive": len(m.realm.passive),
        "connections_at_end": during["connections"],
        "connections_after_60s": len(m.conns),
        "dial_queues_after_60s": len(m.dial_queues),
        "dialing_after_60s": len(m.dialing),
        "seen_ids": len(m.caches.seen),
        "ordering_publishers": len(m.ordering.states),
        "events": sim.counters["events"],
    }
    report.containers = peaks
    return report


def _graceful(sim: Simulator, n: SimNode) -> None:
    if n.alive:
        sim.unsubscribe(n, "news.>")
        sim.leave(n)
        sim.retire(n)
