"""Scenarios for the mesh simulator: dataclasses with a seed, and runners that return reports.

Each runner builds a :class:`~quicmesh.testing.sim.Simulator`, drives it and returns a
:class:`Report`: delivery ratio per subscriber, relative message redundancy (RMR), last-delivery
hop counts, convergence times, and the peak size of every bounded container over all nodes. A
report is a pure function of the scenario (its seed included): running it twice gives equal
reports.

Definitions
-----------
* **Delivery ratio** of a subscriber: messages it delivered / messages it was expected to
  deliver (every message published while it was subscribed and had joined the swarm).
* **RMR** (Leitão et al.): ``m / (n - 1) - 1`` summed over messages, where ``m`` is the number of
  payload transmissions (MGossip sends, GRAFT answers included) and ``n`` the number of nodes
  that delivered the message; 0 is a perfect tree, a flood over degree d is about d - 1.
* **Last-delivery hops**: for each message, the hop count of its last delivery (its tree depth).

``python -m quicmesh.testing.scenarios [--large]`` runs the default set (plus the 1,000-node
scenario with ``--large``) and prints the reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from random import Random
from typing import Any

from ..config import AddressBookConfig, GossipConfig, MembershipConfig, NodeConfig, TransportConfig
from ..core.mesh import HINT_TTL
from ..core.mesh_messages import MForwardJoin, MGossip, MIHave, MShuffle, PeerInfo
from ..errors import LimitExceeded
from ..identity import NodeId
from .network import Latency, NetworkParams
from .sim import SimNode, Simulator, node_identity

__all__ = [
    "BroadcastScenario",
    "FloodScenario",
    "IdentityChurnScenario",
    "PartitionScenario",
    "Report",
    "UnsubscribeScenario",
    "build_overlay",
    "container_peaks",
    "default_scenarios",
    "main",
    "overlay_connected",
    "run",
]

SWARM = "news"
TOPIC = "news.sport"


@dataclass
class Report:
    """What a scenario run measured. ``figures`` holds scalars; ``delivery`` the ratio per
    subscriber (by node index); ``containers`` maps a container name to (peak, capacity)."""

    name: str
    seed: int
    figures: dict[str, Any] = field(default_factory=dict)  # bounded: fixed keys per scenario
    delivery: dict[int, float] = field(default_factory=dict)  # bounded: one per node
    containers: dict[str, tuple[int, int]] = field(default_factory=dict)  # bounded: one per name

    def containers_within_bounds(self) -> bool:
        """Whether every container's peak stayed at or under its capacity."""
        return all(peak <= cap for peak, cap in self.containers.values())

    def format(self) -> str:
        """A human-readable multi-line summary."""
        lines = [f"== {self.name} (seed {self.seed})"]
        for k, v in self.figures.items():
            lines.append(f"  {k:32} {v:.4g}" if isinstance(v, float) else f"  {k:32} {v}")
        if self.delivery:
            vals = list(self.delivery.values())
            lines.append(f"  {'delivery min/mean':32} {min(vals):.4f} / {statistics.fmean(vals):.4f}"
                         f" over {len(vals)} subscribers")
        if self.containers:
            lines.append("  containers (peak / capacity):")
            for name, (peak, cap) in sorted(self.containers.items()):
                flag = "" if peak <= cap else "  OVER"
                lines.append(f"    {name:32} {peak:>7} / {cap:<7}{flag}")
        return "\n".join(lines)


def container_peaks(
    nodes: Iterable[SimNode], into: dict[str, tuple[int, int]] | None = None
) -> dict[str, tuple[int, int]]:
    """Merge the peak of every live container of ``nodes`` by name (max peak, max capacity)."""
    out = {} if into is None else into
    for n in nodes:
        for st in n.registry.snapshot():
            peak, cap = out.get(st.name, (0, 0))
            out[st.name] = (max(peak, st.peak), max(cap, st.capacity))
            if st.capacity_bytes is not None and st.bytes is not None:
                bname = st.name + "[bytes]"
                bpeak, bcap = out.get(bname, (0, 0))
                out[bname] = (max(bpeak, st.bytes), max(bcap, st.capacity_bytes))
    return out


def build_overlay(sim: Simulator, count: int, *, spacing: float = 0.05, bootstraps: int = 3) -> list[SimNode]:
    """Create ``count`` nodes joining through the first ``bootstraps`` (every 10th by address)."""
    nodes = [sim.add_node() for _ in range(count)]
    for i, n in enumerate(nodes):
        contacts = nodes[: min(i, bootstraps)]
        by_addr = i % 10 == 9
        sim.at(sim.now + i * spacing, partial(sim.join, n, contacts, by_address=by_addr))
    return nodes


def overlay_connected(nodes: list[SimNode], swarm: str | None = None) -> bool:
    """Whether the active views of the live ``nodes`` (realm, or ``swarm``) form one component."""
    live = [n for n in nodes if n.alive]
    if not live:
        return True
    ids = {n.id for n in live}
    adj: dict[NodeId, set[NodeId]] = {n.id: set() for n in live}
    for n in live:
        if swarm is None:
            peers = n.mesh.realm.active_peers()
        else:
            sw = n.mesh.swarms.peek(swarm)
            peers = sw.hv.active_peers() if sw is not None else []
        for p in peers:
            if p in ids:
                adj[n.id].add(p)
                adj[p].add(n.id)
    start = live[0].id
    seen = {start}
    todo = [start]
    while todo:
        x = todo.pop()
        for y in adj[x]:
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return len(seen) == len(ids)


def _sim(seed: int, config: NodeConfig, latency_median: float, loss: float = 0.0, duplicate: float = 0.0,
         loss_mode: str = "retransmit") -> Simulator:
    return Simulator(seed, config, NetworkParams(latency=Latency(median=latency_median), loss=loss,
                                                 loss_mode=loss_mode, duplicate=duplicate))


# -- broadcast: no loss, loss, duplication, churn ----------------------------------------------------


@dataclass(frozen=True)
class BroadcastScenario:
    """``nodes`` nodes subscribe to one swarm; ``publishers`` of them publish ``messages`` at
    ``rate`` per second. ``loss``/``duplicate`` apply to every message; ``churn`` is the fraction
    of nodes crashed and replaced by fresh identities during publishing."""

    name: str = "broadcast"
    seed: int = 1
    nodes: int = 100
    messages: int = 1000
    publishers: int = 5
    rate: float = 50.0
    loss: float = 0.0
    loss_mode: str = "retransmit"
    duplicate: float = 0.0
    churn: float = 0.0
    latency_median: float = 0.010
    settle: float = 20.0
    drain: float = 20.0
    payload_size: int = 100
    join_spacing: float = 0.05


def run_broadcast(sc: BroadcastScenario) -> Report:
    """Run a :class:`BroadcastScenario`."""
    sim = _sim(sc.seed, NodeConfig(), sc.latency_median, sc.loss, sc.duplicate, sc.loss_mode)
    rng = Random(f"scenario/{sc.seed}")
    nodes = build_overlay(sim, sc.nodes, spacing=sc.join_spacing)
    sim.run_for(sc.settle / 2)
    for i, n in enumerate(nodes):
        sim.subscribe(n, "news.*" if i % 2 else "news.>")
    sim.run_for(sc.settle / 2)
    # node index -> time it had joined the swarm (a swarm neighbour), observed every 0.25 s
    ready: dict[int, float] = {}
    for n in nodes:
        sw0 = n.mesh.swarms.peek(SWARM)
        if sw0 is not None and len(sw0.hv.active) > 0:
            ready[n.index] = 0.0
    not_ready_at_start = sc.nodes - len(ready)
    publishers = nodes[3:3 + sc.publishers]
    protected = {n.index for n in nodes[:3]} | {n.index for n in publishers}
    published: dict[tuple[NodeId, int], tuple[int, float]] = {}
    t0 = sim.now
    padding = b"x" * max(0, sc.payload_size - 8)

    def publish(k: int) -> None:
        pub = publishers[k % len(publishers)]
        sw = pub.mesh.swarms.peek(SWARM)
        seq = sw.next_seq if sw is not None else 0
        sim.publish(pub, TOPIC, k.to_bytes(8, "big") + padding)
        published[(pub.id, seq)] = (k, sim.now)

    for k in range(sc.messages):
        sim.at(t0 + k / sc.rate, partial(publish, k))
    window = sc.messages / sc.rate
    fresh: list[SimNode] = []

    def replace() -> None:
        cands = [n for n in sim.nodes if n.alive and n.index not in protected]
        victim = cands[rng.randrange(len(cands))]
        sim.retire(victim)
        ready.pop(victim.index, None)
        n = sim.add_node()
        fresh.append(n)
        sim.join(n, nodes[:3])
        sim.subscribe(n, "news.>")

    for _ in range(round(sc.churn * sc.nodes)):
        sim.at(t0 + rng.random() * window * 0.9, replace)

    def poll() -> None:
        for n in (*nodes, *fresh):
            if n.alive and n.index not in ready:
                sw = n.mesh.swarms.peek(SWARM)
                if sw is not None and len(sw.hv.active) > 0:
                    ready[n.index] = sim.now
        if sim.now < t0 + window:
            sim.at(sim.now + 0.25, poll)

    sim.at(t0, poll)
    payload_before = sim.counters["payload_sent"]
    sim.run_until(t0 + window + sc.drain)
    payload_sent = sim.counters["payload_sent"] - payload_before

    receivers: dict[int, int] = {}  # bounded: one per message
    last_hops: dict[int, int] = {}  # bounded: one per message
    latencies: list[float] = []
    duplicates = 0
    order_violations = 0
    report = Report(sc.name, sc.seed)
    for n in sim.nodes:
        if not n.alive:
            continue
        got: set[int] = set()
        last_seq: dict[NodeId, int] = {}
        for d in n.deliveries:
            key = published.get((d.publisher, d.seq))
            if key is None:
                continue
            k, t_pub = key
            if k in got:
                duplicates += 1
                continue
            got.add(k)
            if d.seq <= last_seq.get(d.publisher, -1):
                order_violations += 1
            last_seq[d.publisher] = d.seq
            receivers[k] = receivers.get(k, 0) + 1
            if n.id != d.publisher:
                latencies.append(d.time - t_pub)
                last_hops[k] = max(last_hops.get(k, 0), d.hops)
        if n.index in ready:
            expected = {k for k, t in published.values() if t >= ready[n.index]}
            if expected:
                report.delivery[n.index] = len(expected & got) / len(expected)
    denom = sum(max(r - 1, 0) for r in receivers.values())
    lat = sorted(latencies)
    hops = list(last_hops.values())
    report.figures = {
        "nodes": sc.nodes,
        "messages": sc.messages,
        "subscribers_measured": len(report.delivery),
        "not_in_swarm_when_publishing_began": not_ready_at_start,
        "delivery_min": min(report.delivery.values(), default=0.0),
        "delivery_mean": statistics.fmean(report.delivery.values()) if report.delivery else 0.0,
        "rmr": payload_sent / denom - 1 if denom else 0.0,
        "last_hops_mean": statistics.fmean(hops) if hops else 0.0,
        "last_hops_max": max(hops, default=0),
        "latency_p50_ms": 1000 * lat[len(lat) // 2] if lat else 0.0,
        "latency_p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else 0.0,
        "duplicate_deliveries": duplicates,
        "order_violations": order_violations,
        "replaced_nodes": len(fresh),
        "net_lost": sim.counters["lost"],
        "net_duplicated": sim.counters["duplicated"],
        "events": sim.counters["events"],
    }
    report.containers = container_peaks(sim.nodes)
    return report


# -- partition and heal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionScenario:
    """A 50/50 partition for ``partition_for`` seconds, then heal; measures re-convergence."""

    name: str = "partition"
    seed: int = 1
    nodes: int = 100
    partition_for: float = 120.0
    one_way: bool = False
    latency_median: float = 0.010
    settle: float = 20.0
    limit: float = 60.0


def run_partition(sc: PartitionScenario) -> Report:
    """Run a :class:`PartitionScenario`."""
    sim = _sim(sc.seed, NodeConfig(), sc.latency_median)
    nodes = build_overlay(sim, sc.nodes)
    sim.run_for(sc.settle / 2)
    for n in nodes:
        sim.subscribe(n, "news.>")
    sim.run_for(sc.settle / 2)
    rng = Random(f"partition/{sc.seed}")
    order = list(nodes)
    rng.shuffle(order)
    side_a, side_b = order[: len(order) // 2], order[len(order) // 2:]
    sim.partition([side_a, side_b], one_way=sc.one_way)
    # publish on each side during the partition: each side still delivers internally
    inside: list[tuple[SimNode, int, list[SimNode]]] = []

    def probe(pub: SimNode, side: list[SimNode], into: list[tuple[SimNode, int, list[SimNode]]]) -> None:
        sw = pub.mesh.swarms.peek(SWARM)
        seq = sw.next_seq if sw is not None else 0
        sim.publish(pub, TOPIC, b"probe")
        into.append((pub, seq, side))

    t_cut = sim.now
    for t in range(10, int(sc.partition_for), 10):
        sim.at(t_cut + t, lambda: probe(side_a[0], side_a, inside))
        sim.at(t_cut + t + 0.5, lambda: probe(side_b[0], side_b, inside))
    sim.run_for(sc.partition_for)
    inside_ok = _probe_ratio(inside)
    split = not overlay_connected(nodes)
    sim.heal()
    t_heal = sim.now
    cross: list[tuple[SimNode, int, list[SimNode], float]] = []

    def cross_probe() -> None:
        for pub, other in ((side_a[0], side_b), (side_b[0], side_a)):
            sw = pub.mesh.swarms.peek(SWARM)
            seq = sw.next_seq if sw is not None else 0
            sim.publish(pub, TOPIC, b"cross")
            cross.append((pub, seq, other, sim.now))
        if sim.now < t_heal + sc.limit:
            sim.at(sim.now + 1.0, cross_probe)

    sim.at(t_heal + 1.0, cross_probe)
    overlay_at: float | None = None
    swarm_at: float | None = None
    while sim.now < t_heal + sc.limit:
        sim.run_for(0.5)
        if overlay_at is None and overlay_connected(nodes):
            overlay_at = sim.now - t_heal
        if swarm_at is None and overlay_connected(nodes, SWARM):
            swarm_at = sim.now - t_heal
    # the first probe (from each side) that reached every node of the other side
    delivered_at: dict[bytes, float] = {}
    for pub, seq, other, _t_pub in cross:
        if pub.id.raw in delivered_at:
            continue
        times = []
        for n in other:
            ts = [d.time for d in n.deliveries if d.publisher == pub.id and d.seq == seq]
            if not ts:
                break
            times.append(ts[0])
        else:
            delivered_at[pub.id.raw] = max(times) - t_heal
    report = Report(sc.name, sc.seed)
    report.figures = {
        "nodes": sc.nodes,
        "partition_s": sc.partition_for,
        "overlay_split_during_partition": split,
        "delivery_within_sides": inside_ok,
        "realm_overlay_connected_after_s": overlay_at if overlay_at is not None else -1.0,
        "swarm_overlay_connected_after_s": swarm_at if swarm_at is not None else -1.0,
        "cross_delivery_a_to_b_s": delivered_at.get(side_a[0].id.raw, -1.0),
        "cross_delivery_b_to_a_s": delivered_at.get(side_b[0].id.raw, -1.0),
        "events": sim.counters["events"],
    }
    report.containers = container_peaks(sim.nodes)
    return report


def _probe_ratio(probes: list[tuple[SimNode, int, list[SimNode]]]) -> float:
    hit = total = 0
    for pub, seq, side in probes:
        for n in side:
            if n is pub:
                continue
            total += 1
            if any(d.publisher == pub.id and d.seq == seq for d in n.deliveries):
                hit += 1
    return hit / total if total else 1.0


# -- flood at 10x capacity ---------------------------------------------------------------------------


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
    pubs = [fid() for _ in range(f * cfg.gossip.max_publishers)]
    for i in range(n_msgs):
        pub = pubs[i % len(pubs)]
        msg = MGossip("news", "news.flood", pub.raw, 1, rng.randrange(1000), [b"p" * 200], 1)
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
    dropped: every node must hold zero per-topic state."""

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
    state_after = sum(n.mesh.topic_state(SWARM) for n in nodes)
    swarm_containers = sum(
        1 for n in nodes for c in n.registry if c.name.startswith(("swarm.", "plumtree."))
    )
    hints_after_leave = sum(len(n.mesh.hints) for n in nodes)
    sim.run_for(HINT_TTL + 10.0)
    report = Report(sc.name, sc.seed)
    report.figures = {
        "topic_state_before": state_before,
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


# -- entry points ------------------------------------------------------------------------------------


Scenario = BroadcastScenario | PartitionScenario | FloodScenario | UnsubscribeScenario | IdentityChurnScenario


def run(sc: Scenario) -> Report:
    """Run any scenario."""
    if isinstance(sc, BroadcastScenario):
        return run_broadcast(sc)
    if isinstance(sc, PartitionScenario):
        return run_partition(sc)
    if isinstance(sc, FloodScenario):
        return run_flood(sc)
    if isinstance(sc, UnsubscribeScenario):
        return run_unsubscribe(sc)
    return run_identity_churn(sc)


def default_scenarios(large: bool = False) -> list[Scenario]:
    """The scenario set of issue #4 (and the 1,000-node one with ``large``)."""
    out: list[Scenario] = [
        BroadcastScenario(name="no_loss"),
        BroadcastScenario(name="churn_20pct", messages=500, churn=0.2),
        BroadcastScenario(name="loss_5pct", messages=500, loss=0.05),
        BroadcastScenario(name="loss_20pct", messages=500, loss=0.20),
        BroadcastScenario(name="gossip_drop_5pct", messages=500, loss=0.05, loss_mode="drop_gossip"),
        BroadcastScenario(name="gossip_drop_20pct", messages=500, loss=0.20, loss_mode="drop_gossip"),
        PartitionScenario(),
        FloodScenario(),
        UnsubscribeScenario(),
        IdentityChurnScenario(),
    ]
    if large:
        out.append(BroadcastScenario(name="large_1000_nodes", nodes=1000, messages=200, rate=20.0, settle=60.0,
                                     join_spacing=0.02))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: run the scenarios and print their reports."""
    ap = argparse.ArgumentParser(prog="python -m quicmesh.testing.scenarios")
    ap.add_argument("--large", action="store_true", help="also run the 1,000-node scenario")
    ap.add_argument("--only", help="run only the scenarios whose name contains this")
    ap.add_argument("--seed", type=int, default=None, help="override every scenario's seed")
    args = ap.parse_args(argv)
    for sc in default_scenarios(args.large):
        if args.only and args.only not in sc.name:
            continue
        if args.seed is not None:
            sc = dataclasses.replace(sc, seed=args.seed)
        print(run(sc).format(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
