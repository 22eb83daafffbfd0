"""#14 in the simulator: shallow, steady broadcast trees and HyParView's massive failure.

The default suite runs sizes that fit CI; ``QUICMESH_SIM_LARGE=1`` (``make sim-large`` prints the
same figures) adds the 1,000-node runs the issue's goals are stated at."""

from __future__ import annotations

import os

import pytest

from quicmesh.testing import Simulator
from quicmesh.testing.report import build_overlay, lowest_latencies, swarm_links
from quicmesh.testing.scenarios import BroadcastScenario, MassiveFailureScenario, Report, run

LARGE = os.environ.get("QUICMESH_SIM_LARGE") == "1"
large = pytest.mark.skipif(not LARGE, reason="1,000-node runs: QUICMESH_SIM_LARGE=1")
long = pytest.mark.timeout(900)  # 1,000 nodes take ~4 minutes alone here, more on a busy machine


def assert_tree(r: Report, max_hops: int, max_stretch_p99: float) -> None:
    f = r.figures
    print(f"{r.name}: last-delivery hops mean {f['last_hops_mean']:.1f} max {f['last_hops_max']}, "
          f"latency p50 {f['latency_p50_ms']:.0f} ms p99 {f['latency_p99_ms']:.0f} ms, RMR {f['rmr']:.2f}, "
          f"stretch p50 {f['stretch_p50']:.2f} p99 {f['stretch_p99']:.2f}")
    assert f["delivery_min"] == 1.0
    assert f["duplicate_deliveries"] == 0 and f["order_violations"] == 0
    assert f["last_hops_max"] <= max_hops
    assert f["latency_p99_ms"] <= 3 * f["latency_p50_ms"]
    # eager links follow measured latency: deliveries take about the fastest path through the
    # swarm overlay (each link adds up to 10 % jitter); a tree that kept the second arrivals'
    # links measured p50 2.65, p99 8.3 at 150 nodes
    assert f["stretch_p50"] <= 1.15 and f["stretch_p99"] <= max_stretch_p99


def assert_healed(r: Report, min_delivery: float) -> None:
    f = r.figures
    print(f"{r.name}: {f['failed']} of {f['nodes']} failed at once; healed in {f['heal_s']:.1f} s "
          f"({f['heal_rounds']:.1f} rounds); next 100 messages delivered to {100 * f['delivery_mean']:.1f} % "
          f"of survivors (min {100 * f['delivery_min']:.1f} %); "
          f"right after the failure {100 * f['early_delivery_mean']:.1f} %")
    assert f["overlay_whole_before"] is True
    assert 0 < f["heal_s"] <= 60
    assert 0 < f["realm_heal_s"] <= 60 and f["realm_connected_after"] is True  # the realm overlay too
    assert f["survivors_with_empty_view"] == 0
    assert f["delivery_mean"] >= min_delivery


def test_five_publishers_150_nodes_shallow_steady_trees() -> None:
    # one tree per publisher: deliveries take about as many hops as a flood would; before #14 a
    # shared tree took 100 nodes to 19 hops and p99 to 40x p50
    r = run(BroadcastScenario(name="trees_150", nodes=150, messages=150, settle=10.0, drain=5.0,
                              join_spacing=0.03))
    assert_tree(r, max_hops=10, max_stretch_p99=1.6)  # measured 1.09
    assert r.figures["rmr"] < 0.5


def test_80pct_of_150_nodes_fail_at_once_overlay_heals_and_delivers() -> None:
    r = run(MassiveFailureScenario(nodes=150, fail=0.8, settle=10.0, drain=5.0, rate=50.0))
    assert_healed(r, min_delivery=0.95)


def test_a_massive_failure_waits_for_a_whole_overlay_before_it_fails_nodes() -> None:
    # 300 nodes joined 1 ms apart are not whole 10 ms after they all subscribe (one link's median
    # latency): the scenario runs on in 1-s steps until they are (as a 10,000-node mesh after its
    # 15 s) instead of failing nodes of a mesh that never settled. (0.1 s after was enough for
    # them once members stopped re-joining: see docs/simulation.md, "Steadier swarm overlays".)
    r = run(MassiveFailureScenario(nodes=300, fail=0.8, settle=0.02, drain=5.0, rate=50.0, join_spacing=0.001))
    print(f"settled {r.figures['settle_s']:.2f} s after the subscriptions")
    assert r.figures["settle_s"] > 1.0  # waited at least one step
    assert_healed(r, min_delivery=0.95)


@large
@long
def test_1000_nodes_hops_and_latency_goals() -> None:
    r = run(BroadcastScenario(name="large_1000_nodes", nodes=1000, messages=200, rate=20.0, settle=60.0,
                              join_spacing=0.02))
    assert_tree(r, max_hops=18, max_stretch_p99=2.0)  # measured hops 10, stretch 1.08 (19, 1.86 before)


@large
@long
@pytest.mark.parametrize("fail", [0.5, 0.8])
def test_massive_failure_1000_nodes(fail: float) -> None:
    r = run(MassiveFailureScenario(name=f"massive_{fail}", nodes=1000, fail=fail))
    assert_healed(r, min_delivery=0.95)


def test_lowest_latencies_agree_with_an_all_pairs_search() -> None:
    # the stretch figure's denominator: Dijkstra over the swarm overlay against Floyd-Warshall
    sim = Simulator(5)
    nodes = build_overlay(sim, 24, spacing=0.02)
    sim.run_for(3.0)
    for n in nodes:
        sim.subscribe(n, "news.>")
    sim.run_for(5.0)
    links = swarm_links(sim, "news")
    swarms = [n.mesh.swarms.peek("news") for n in nodes]
    views = {(n.index, sim.by_id[p].index)
             for n, sw in zip(nodes, swarms, strict=True) if sw for p in sw.hv.active_peers()}
    assert all(swarms)
    assert links == {(min(a, b), max(a, b)) for a, b in views}
    assert len(links) >= 24  # a connected swarm overlay, not a line
    inf = float("inf")
    d = {(i.index, j.index): 0.0 if i is j else inf for i in nodes for j in nodes}
    for a, b in links:
        d[a, b] = d[b, a] = sim.link_latency(a, b)
    for k in nodes:
        for i in nodes:
            for j in nodes:
                via = d[i.index, k.index] + d[k.index, j.index]
                if via < d[i.index, j.index]:
                    d[i.index, j.index] = via
    for src in nodes[:4]:
        got = lowest_latencies(sim, src.index, links)
        want = {j.index: d[src.index, j.index] for j in nodes if d[src.index, j.index] < inf}
        assert got.keys() == want.keys() and len(got) == 24
        assert all(abs(got[i] - want[i]) < 1e-12 for i in got)
    # the fastest link is its ends' fastest path (any other takes two links at least); taken
    # away, the path left is slower
    a, b = min(links, key=lambda ab: sim.link_latency(*ab))
    assert d[a, b] == sim.link_latency(a, b)
    assert lowest_latencies(sim, a, links - {(a, b)}).get(b, inf) > d[a, b]
