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
* **Latency** (``latency_p50_ms`` / ``latency_p99_ms``): publish to delivery, over every delivery
  but the publisher's own; ``latency_joined_p99_ms`` only over messages published after the
  receiver had joined the swarm (the rest, ``caught_up_deliveries``, are earlier messages a
  node that joined under churn received through repair: seconds old by design).
* **Stretch** (``stretch_p50`` / ``stretch_p99``; runs without churn): a delivery's latency over
  the lowest-latency path from its publisher to the receiver through the swarm overlay as it
  stood when the message was published (sampled every 0.25 s; each link its base latency, and a
  message adds up to ``Latency.jitter`` to each link), over the deliveries in
  ``latency_joined_p99_ms``. 1.0 is a tree of the fastest paths (Plumtree's first arrivals); a
  tree that kept slower links shows it here, not in hops.

``python -m quicmesh.testing.scenarios [--large] [--massive-nodes N]`` runs the default set (plus the 1,000-node
scenario with ``--large``) and prints the reports.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import statistics
import sys
from dataclasses import dataclass
from functools import partial
from random import Random

from ..config import NodeConfig
from ..identity import NodeId
from .abuse import (
    FloodScenario,
    IdentityChurnScenario,
    UnsubscribeScenario,
    run_flood,
    run_identity_churn,
    run_unsubscribe,
)
from .massive import MassiveFailureScenario, run_massive_failure
from .report import Report, _sim, build_overlay, container_peaks, lowest_latencies, overlay_connected, swarm_links
from .sim import SimNode, Simulator

__all__ = [
    "BroadcastScenario",
    "FloodScenario",
    "IdentityChurnScenario",
    "MassiveFailureScenario",
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


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (0.0 when empty): the sorted value at ``int(len * q)``."""
    v = sorted(values)
    return v[int(len(v) * q)] if v else 0.0


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

    # the swarm overlay's links from each time they changed (polled), for the stretch
    overlays: list[tuple[float, frozenset[tuple[int, int]]]] = []  # bounded: one per poll at most

    def poll() -> None:
        if not sc.churn:
            links = swarm_links(sim, SWARM)
            if not overlays or overlays[-1][1] != links:
                overlays.append((sim.now, links))
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
    joined_lat: list[float] = []  # messages published after the receiver was in the swarm
    caught_up = 0  # deliveries of messages published before the receiver was in the swarm
    # (publisher, receiver index, published at, latency) of the joined deliveries, for the stretch
    joined: list[tuple[NodeId, int, float, float]] = []  # bounded: one per delivery
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
                if n.index in ready and t_pub >= ready[n.index]:
                    joined_lat.append(d.time - t_pub)
                    if not sc.churn:
                        joined.append((d.publisher, n.index, t_pub, d.time - t_pub))
                else:
                    caught_up += 1
                last_hops[k] = max(last_hops.get(k, 0), d.hops)
        if n.index in ready:
            expected = {k for k, t in published.values() if t >= ready[n.index]}
            if expected:
                report.delivery[n.index] = len(expected & got) / len(expected)
    denom = sum(max(r - 1, 0) for r in receivers.values())
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
        "latency_p50_ms": 1000 * _pct(latencies, 0.5),
        "latency_p99_ms": 1000 * _pct(latencies, 0.99),
        "latency_joined_p99_ms": 1000 * _pct(joined_lat, 0.99),
        "caught_up_deliveries": caught_up,
        "duplicate_deliveries": duplicates,
        "order_violations": order_violations,
        "replaced_nodes": len(fresh),
        "net_lost": sim.counters["lost"],
        "net_duplicated": sim.counters["duplicated"],
        "events": sim.counters["events"],
    }
    if not sc.churn:
        report.figures.update(_stretch(sim, joined, overlays))
        report.figures["overlay_changes"] = max(len(overlays) - 1, 0)  # while publishing
    report.containers = container_peaks(sim.nodes)
    return report


def _stretch(sim: Simulator, joined: list[tuple[NodeId, int, float, float]],
             overlays: list[tuple[float, frozenset[tuple[int, int]]]]) -> dict[str, float]:
    """``stretch_p50`` / ``stretch_p99`` of the (publisher, receiver, published at, latency)
    deliveries, each against the overlay of the last poll at or before its publication."""
    index = {n.id: n.index for n in sim.nodes}
    times = [t for t, _ in overlays]
    paths: dict[tuple[int, int], dict[int, float]] = {}  # bounded: one per (overlay, publisher)
    ratios: list[float] = []
    for pub, receiver, t_pub, latency in joined:
        v = bisect.bisect_right(times, t_pub) - 1
        if v < 0 or pub not in index:
            continue
        key = (v, index[pub])
        if key not in paths:
            paths[key] = lowest_latencies(sim, index[pub], overlays[v][1])
        best = paths[key].get(receiver)
        if best:
            ratios.append(latency / best)
    return {"stretch_p50": _pct(ratios, 0.5), "stretch_p99": _pct(ratios, 0.99)}


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

# -- entry points ------------------------------------------------------------------------------------


Scenario = (BroadcastScenario | PartitionScenario | FloodScenario | UnsubscribeScenario | IdentityChurnScenario
            | MassiveFailureScenario)


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
    if isinstance(sc, MassiveFailureScenario):
        return run_massive_failure(sc)
    return run_identity_churn(sc)


def default_scenarios(large: bool = False, massive_nodes: int | None = None) -> list[Scenario]:
    """The scenario set of issue #4 and #14's massive failures (at 200 nodes; 1,000 with
    ``large``, plus the 1,000-node broadcast; ``massive_nodes`` overrides their size, e.g. 10,000)."""
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
    size = massive_nodes or (1000 if large else 200)
    for fail in (0.5, 0.8):
        out.append(MassiveFailureScenario(name=f"massive_failure_{round(fail * 100)}pct", nodes=size, fail=fail))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: run the scenarios and print their reports."""
    ap = argparse.ArgumentParser(prog="python -m quicmesh.testing.scenarios")
    ap.add_argument("--large", action="store_true", help="also run the 1,000-node scenarios")
    ap.add_argument("--massive-nodes", type=int, default=None,
                    help="nodes of the massive-failure scenarios (default 200, 1,000 with --large)")
    ap.add_argument("--only", help="run only the scenarios whose name contains this")
    ap.add_argument("--seed", type=int, default=None, help="override every scenario's seed")
    args = ap.parse_args(argv)
    for sc in default_scenarios(args.large, args.massive_nodes):
        if args.only and args.only not in sc.name:
            continue
        if args.seed is not None:
            sc = dataclasses.replace(sc, seed=args.seed)
        print(run(sc).format(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
