"""/metrics: every container of the node's registry is exported, and only declared names are used."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from quicmesh.bounded import BoundedDeque, ContainerRegistry, LruMap, Overflow, TtlMap
from quicmesh.config import ObservabilityConfig
from quicmesh.observability import (
    ALL_METRICS,
    HttpEndpoint,
    LeakSentinel,
    NodeGauges,
    NodeMetrics,
    metric_names,
    render,
)
from quicmesh.runtime.transport import TransportStats


@dataclass
class FakeNode:
    node_id: str = "node-abc"
    realm: str = "test"
    registry: ContainerRegistry = field(default_factory=lambda: ContainerRegistry("fake"))
    is_ready: tuple[bool, str] = (True, "ready")
    node_gauges: NodeGauges = field(default_factory=NodeGauges)

    def health(self) -> Mapping[str, Mapping[str, Any]]:
        return {"gossip": {"topics": 1}}

    def gauges(self) -> NodeGauges:
        return self.node_gauges

    def ready(self) -> tuple[bool, str]:
        return self.is_ready


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def make_node() -> tuple[FakeNode, list[Any]]:
    node = FakeNode()
    reg = node.registry
    seen: LruMap[str, int] = LruMap("gossip.seen_ids", 4, registry=reg)
    for i in range(6):  # 2 evictions
        seen[f"m{i}"] = i
    payloads: TtlMap[str, bytes] = TtlMap(
        "gossip.payload_cache", 10, 30.0, capacity_bytes=1000, sizeof=len, registry=reg
    )
    payloads.set("a", b"x" * 300, now=0.0)
    dial: BoundedDeque[int] = BoundedDeque("gossip.dial_queue", 8, Overflow.DROP_NEWEST, registry=reg)
    for i in range(3):
        dial.append(i)
    return node, [seen, payloads, dial]


def test_every_container_is_exported_with_size_and_capacity() -> None:
    node, keep = make_node()
    text = NodeMetrics(node).render()
    got = samples(text)
    snapshot = node.registry.snapshot()
    assert len(snapshot) == 3
    for st in snapshot:
        labels = (("container", st.name), ("kind", st.kind))
        assert got[("quicmesh_container_size", labels)] == st.size
        assert got[("quicmesh_container_capacity", labels)] == st.capacity
        assert got[("quicmesh_container_peak", labels)] == st.peak
        assert got[("quicmesh_container_evictions_total", labels)] == st.evictions
        assert got[("quicmesh_container_rejections_total", labels)] == st.rejections
        assert got[("quicmesh_container_fill", labels)] == st.fill
    assert value(text, "quicmesh_container_evictions_total", container="gossip.seen_ids", kind="lru_map") == 2
    assert value(text, "quicmesh_container_bytes", container="gossip.payload_cache", kind="ttl_map") == 300
    assert value(text, "quicmesh_container_capacity_bytes", container="gossip.payload_cache", kind="ttl_map") == 1000
    # entry-capped containers have no byte series
    assert ("quicmesh_container_bytes", (("container", "gossip.seen_ids"), ("kind", "lru_map"))) not in got
    del keep


def test_a_new_container_appears_without_wiring_and_a_closed_one_disappears() -> None:
    node, keep = make_node()
    metrics = NodeMetrics(node)
    extra: BoundedDeque[int] = BoundedDeque("rpc.pending", 5, registry=node.registry)
    extra.append(1)
    assert value(metrics.render(), "quicmesh_container_size", container="rpc.pending", kind="deque") == 1
    extra.close()
    got = samples(metrics.render())
    assert not any(dict(labels).get("container") == "rpc.pending" for _, labels in got)
    del keep


def test_containers_sharing_a_name_are_summed_with_an_instance_count() -> None:
    node = FakeNode()
    queues = []
    for n in (2, 5, 1):
        q: BoundedDeque[int] = BoundedDeque("pubsub.subscriber_queue", 10, registry=node.registry)
        for i in range(n):
            q.append(i)
        queues.append(q)
    text = NodeMetrics(node).render()
    labels = {"container": "pubsub.subscriber_queue", "kind": "deque"}
    assert value(text, "quicmesh_container_size", **labels) == 8
    assert value(text, "quicmesh_container_capacity", **labels) == 30
    assert value(text, "quicmesh_container_instances", **labels) == 3
    assert value(text, "quicmesh_container_peak", **labels) == 5  # largest single instance
    assert value(text, "quicmesh_container_fill", **labels) == 0.5  # fullest single instance


def test_counters_stay_monotonic_when_a_container_goes_away() -> None:
    node = FakeNode()
    metrics = NodeMetrics(node)
    a: BoundedDeque[int] = BoundedDeque("pubsub.subscriber_queue", 2, registry=node.registry)
    b: BoundedDeque[int] = BoundedDeque("pubsub.subscriber_queue", 2, registry=node.registry)
    for i in range(5):
        a.append(i)  # 3 evictions
    b.append(0)
    labels = {"container": "pubsub.subscriber_queue", "kind": "deque"}
    assert value(metrics.render(), "quicmesh_container_evictions_total", **labels) == 3
    a.close()
    del a
    gc.collect()
    for i in range(4):
        b.append(i)  # 3 more evictions
    text = metrics.render()
    assert value(text, "quicmesh_container_evictions_total", **labels) == 6
    assert value(text, "quicmesh_container_instances", **labels) == 1


def test_node_gauges_and_labels_never_carry_peer_ids() -> None:
    node, keep = make_node()
    node.node_gauges = NodeGauges(
        peers={"active": 5, "passive": 28},
        topics=3,
        subscriptions=7,
        pending_calls=2,
        clients=1,
        transport=TransportStats(
            connections=4,
            handshakes_in_progress=1,
            accepted_total=10,
            dialed_total=6,
            refused_total={"max_connections": 3, "realm": 1},
            dropped_frames_total=9,
            handshakes_early_total=5,
        ),
    )
    text = NodeMetrics(node).render()
    assert value(text, "quicmesh_connections") == 4
    assert value(text, "quicmesh_peers", view="active") == 5
    assert value(text, "quicmesh_peers", view="passive") == 28
    assert value(text, "quicmesh_topics") == 3
    assert value(text, "quicmesh_subscriptions") == 7
    assert value(text, "quicmesh_pending_calls") == 2
    assert value(text, "quicmesh_handshakes_refused_total", reason="max_connections") == 3
    assert value(text, "quicmesh_handshakes_refused_total", reason="realm") == 1
    assert value(text, "quicmesh_frames_dropped_total") == 9
    assert value(text, "quicmesh_handshakes_early_total") == 5
    assert value(text, "quicmesh_node_ready") == 1
    assert value(text, "quicmesh_node_info", node_id="node-abc", realm="test") == 1
    assert value(text, "quicmesh_process_resident_memory_bytes") > 1_000_000
    assert value(text, "quicmesh_process_open_fds") >= 3
    allowed = {"container", "kind", "view", "reason", "node_id", "realm"}
    for _, labels in samples(text):
        assert {k for k, _ in labels} <= allowed
    node.is_ready = (False, "joining")
    assert value(NodeMetrics(node).render(), "quicmesh_node_ready") == 0
    del keep


def test_only_declared_metric_names_are_exported() -> None:
    node, keep = make_node()
    sentinel = LeakSentinel(ObservabilityConfig(), node.registry, lambda: 50_000_000)
    sentinel.sample(0.0)
    sentinel.sample(5.0)
    text = NodeMetrics(node, sentinel, clock=lambda: 5.0).render()
    names = {name for name, _ in samples(text)}
    declared = metric_names()
    assert names <= declared, names - declared
    # every family but the loop-only task count is present here (not in a loop), even those
    # whose labelled series are empty right now (no peers, refusals or sentinel reasons)
    families = {f.name for f in text_string_to_metric_families(text.decode())}
    missing = {spec.family for spec in ALL_METRICS} - families - {"quicmesh_asyncio_tasks"}
    assert not missing, missing
    assert len(declared) == len(ALL_METRICS)
    assert value(text, "quicmesh_sentinel_degraded") == 0
    assert value(text, "quicmesh_sentinel_rss_slope_bytes_per_second") == 0
    assert value(text, "quicmesh_sentinel_samples") == 2
    # the sentinel's own history is a container like any other
    assert value(text, "quicmesh_container_size", container="observability.sentinel_history", kind="deque") == 2
    del keep


def test_private_registry_not_the_global_one() -> None:
    node, keep = make_node()
    metrics = NodeMetrics(node)
    metrics.render()
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "quicmesh_container_size" not in global_text
    # two nodes in one process do not collide
    other, keep2 = make_node()
    other.node_id = "node-def"
    assert value(render(other), "quicmesh_node_info", node_id="node-def", realm="test") == 1
    assert value(metrics.render(), "quicmesh_node_info", node_id="node-abc", realm="test") == 1
    del keep, keep2


async def test_live_metrics_endpoint_exports_every_container() -> None:
    node, keep = make_node()
    extra: BoundedDeque[bytes] = BoundedDeque(
        "store.pending_ops", 16, capacity_bytes=4096, sizeof=len, registry=node.registry
    )
    extra.append(b"x" * 100)
    endpoint = HttpEndpoint(node, "127.0.0.1", 0)
    address = await endpoint.start()
    try:
        body = await asyncio.to_thread(_fetch, f"http://{address}/metrics")
    finally:
        await endpoint.stop()
    got = samples(body)
    snapshot = node.registry.snapshot()
    assert len(snapshot) == 4
    for st in snapshot:
        labels = (("container", st.name), ("kind", st.kind))
        assert got[("quicmesh_container_size", labels)] == st.size, st.name
        assert got[("quicmesh_container_capacity", labels)] == st.capacity, st.name
    assert value(body, "quicmesh_container_bytes", container="store.pending_ops", kind="deque") == 100
    assert value(body, "quicmesh_asyncio_tasks") >= 1
    del keep


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return bytes(resp.read())


async def test_asyncio_task_count_when_a_loop_runs() -> None:
    node, keep = make_node()
    gate = asyncio.Event()
    tasks = [asyncio.create_task(gate.wait()) for _ in range(5)]
    n = value(render(node), "quicmesh_asyncio_tasks")
    assert n >= 6  # ours plus the test's own task
    gate.set()
    await asyncio.gather(*tasks)
    assert value(render(node), "quicmesh_asyncio_tasks") <= n - 5
    del keep
