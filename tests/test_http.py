"""The HTTP endpoint: routes, status codes, limits (connections, head size, read timeout)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quicmesh.bounded import BoundedDeque, ContainerRegistry, LruMap
from quicmesh.config import ObservabilityConfig
from quicmesh.errors import ConfigError
from quicmesh.observability import HttpEndpoint, LeakSentinel, NodeGauges, Observability, is_loopback
from quicmesh.runtime.transport import TransportStats
from quicmesh.testing.wait import eventually


@dataclass
class FakeNode:
    node_id: str = "node-http"
    realm: str = "test"
    registry: ContainerRegistry = field(default_factory=lambda: ContainerRegistry("fake"))
    is_ready: tuple[bool, str] = (True, "ready")

    def health(self) -> Mapping[str, Mapping[str, Any]]:
        return {
            "address_book": {"peers": 12, "evicted_total": 1},
            "gossip": {"topics": 2, "seen_ids": 40},
            "status": {"spoof": True},  # reserved: must not override the endpoint's own status
        }

    def gauges(self) -> NodeGauges:
        return NodeGauges(
            peers={"active": 4, "passive": 20},
            topics=2,
            transport=TransportStats(connections=4, refused_total={"max_connections": 2}),
        )

    def ready(self) -> tuple[bool, str]:
        return self.is_ready


def make_node() -> tuple[FakeNode, list[Any]]:
    node = FakeNode()
    seen: LruMap[str, int] = LruMap("gossip.seen_ids", 50, registry=node.registry)
    for i in range(40):
        seen[str(i)] = i
    q: BoundedDeque[int] = BoundedDeque("pubsub.subscriber_queue", 10, registry=node.registry)
    q.append(1)
    return node, [seen, q]


async def request(address: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


async def get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_routes() -> None:
    node, keep = make_node()
    endpoint = HttpEndpoint(node, "127.0.0.1", 0)
    address = await endpoint.start()
    assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
    try:
        status, headers, body = await get(address, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"quicmesh_container_size", "quicmesh_connections", "quicmesh_asyncio_tasks"} <= names

        status, headers, body = await get(address, "/health?verbose=1")
        assert status == 200 and headers["content-type"] == "application/json"
        doc = json.loads(body)
        assert doc["status"] == "ok"
        assert doc["node_id"] == "node-http" and doc["realm"] == "test"
        assert doc["address_book"] == {"peers": 12, "evicted_total": 1}
        assert doc["gossip"]["seen_ids"] == 40
        assert doc["gauges"]["peers"] == {"active": 4, "passive": 20}
        assert doc["gauges"]["handshakes_refused_total"] == {"max_connections": 2}
        seen = doc["containers"]["gossip.seen_ids"]
        assert (seen["size"], seen["capacity"], seen["fill"], seen["kind"]) == (40, 50, 0.8, "lru_map")
        assert doc["containers"]["pubsub.subscriber_queue"]["size"] == 1
        assert doc["process"]["rss_bytes"] > 0
        assert doc["sentinel"] is None

        assert (await get(address, "/live"))[0] == 200
        status, _, body = await get(address, "/ready")
        assert status == 200 and json.loads(body) == {"ready": True, "reason": "ready"}
        node.is_ready = (False, "joining the mesh")
        status, _, body = await get(address, "/ready")
        assert status == 503 and json.loads(body) == {"ready": False, "reason": "joining the mesh"}

        assert (await get(address, "/nope"))[0] == 404
        status, headers, _ = await request(address, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert status == 405 and headers["allow"] == "GET"
        assert (await request(address, b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405
        assert (await request(address, b"garbage\r\n\r\n"))[0] == 400
        assert (await request(address, b"GET /metrics SPDY/9\r\n\r\n"))[0] == 400
    finally:
        await endpoint.stop()
    del keep


async def test_health_reports_degraded_with_the_sentinels_reasons() -> None:
    node, keep = make_node()
    cfg = ObservabilityConfig(near_capacity=0.9, near_capacity_for=10.0)
    full: BoundedDeque[int] = BoundedDeque("gossip.dial_queue", 4, registry=node.registry)
    for i in range(4):
        full.append(i)
    sentinel = LeakSentinel(cfg, node.registry, lambda: 10_000_000)
    clock = {"t": 0.0}
    sentinel.sample(0.0)
    sentinel.sample(5.0)
    endpoint = HttpEndpoint(node, "127.0.0.1", 0, sentinel, clock=lambda: clock["t"])
    address = await endpoint.start()
    try:
        clock["t"] = 5.0
        assert json.loads((await get(address, "/health"))[2])["status"] == "ok"
        clock["t"] = 12.0
        doc = json.loads((await get(address, "/health"))[2])
        assert doc["status"] == "degraded"
        assert [(r["kind"], r["name"]) for r in doc["reasons"]] == [("near_capacity", "gossip.dial_queue")]
        assert doc["sentinel"]["status"] == "degraded"
        body = (await get(address, "/metrics"))[2].decode()
        assert "quicmesh_sentinel_degraded 1.0" in body
        assert 'quicmesh_sentinel_reasons{kind="near_capacity"} 1.0' in body
        full.drain()
        sentinel.sample(13.0)
        clock["t"] = 13.0
        assert json.loads((await get(address, "/health"))[2])["status"] == "ok"
    finally:
        await endpoint.stop()
    del keep


async def test_refuses_non_loopback_unless_allowed() -> None:
    node, _ = make_node()
    for host in ("0.0.0.0", "192.0.2.1", "example.com", "::"):
        with pytest.raises(ConfigError):
            await HttpEndpoint(node, host, 0).start()
    assert is_loopback("127.0.0.1") and is_loopback("127.5.0.1") and is_loopback("::1")
    assert is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("0.0.0.0")
    # allow_remote lifts the check (the address itself is still loopback here: tests stay local)
    endpoint = HttpEndpoint(node, "localhost", 0, allow_remote=True)
    await endpoint.start()
    await endpoint.stop()


async def test_connection_cap_head_size_and_read_timeout() -> None:
    node, keep = make_node()
    endpoint = HttpEndpoint(node, "127.0.0.1", 0, max_connections=2, max_request_bytes=1024, read_timeout=0.5)
    address = await endpoint.start()
    host, _, port = address.rpartition(":")
    try:
        # two idle connections take both slots; a third is answered 503 at once
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        await eventually(lambda: endpoint.active_connections == 2)
        status, _, body = await get(address, "/live")
        assert status == 503 and b"too many" in body
        assert endpoint.refused_total == 1
        # the idle ones time out with 408 and free their slots
        for reader, writer in idle:
            data = await asyncio.wait_for(reader.read(), timeout=5)
            assert data.startswith(b"HTTP/1.1 408 ")
            writer.close()
        await eventually(lambda: endpoint.active_connections == 0)
        assert (await get(address, "/live"))[0] == 200
        # a request head over the cap gets 431
        big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n"
        assert (await request(address, big))[0] == 431
        assert (await get(address, "/live"))[0] == 200
    finally:
        await endpoint.stop()
    del keep


async def test_stop_closes_open_connections_and_frees_the_port() -> None:
    node, keep = make_node()
    endpoint = HttpEndpoint(node, "127.0.0.1", 0, read_timeout=30)
    address = await endpoint.start()
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await eventually(lambda: endpoint.active_connections == 1)
    await endpoint.stop()
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    assert endpoint.active_connections == 0
    await endpoint.stop()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))
    del keep


async def test_observability_bundle_samples_and_serves() -> None:
    node, keep = make_node()
    cfg = ObservabilityConfig(sentinel_interval=0.01)
    obs = Observability(node, cfg, http="127.0.0.1:0", traffic_counter=lambda: 0.0, sample_rss=lambda: 1_000_000)
    address = await obs.start()
    assert address is not None
    try:
        await eventually(lambda: obs.sentinel.samples >= 2)
        doc = json.loads((await get(address, "/health"))[2])
        assert doc["sentinel"]["samples"] >= 2
        assert doc["containers"]["observability.sentinel_history"]["size"] >= 2
    finally:
        await obs.stop()
    assert not obs.task.running
    del keep


async def test_the_runtime_node_plugs_in() -> None:
    from quicmesh.config import NodeConfig
    from quicmesh.runtime.memory import MemoryNetwork
    from quicmesh.runtime.node import Node

    net = MemoryNetwork()
    cfg = NodeConfig(realm="obs", http="127.0.0.1:0", observability=ObservabilityConfig(sentinel_interval=0.05))
    a = await Node.start(cfg, network=net)
    b = await Node.start(NodeConfig(realm="obs", bootstrap=(a.address,)), network=net)
    try:
        address = a.http_address
        assert address is not None
        await a.wait_until(lambda: len(a.peers()) == 1, timeout=5)
        doc = json.loads((await get(address, "/health"))[2])
        assert doc["status"] == "ok" and doc["realm"] == {"mode": "open", "name": "obs"} and doc["node_id"] == str(a.id)
        assert doc["ready"]["ok"] is True
        assert doc["gauges"]["connections"] == 1
        assert {st.name for st in a.registry.snapshot()} <= set(doc["containers"])
        families = {f.name: f for f in text_string_to_metric_families((await get(address, "/metrics"))[2].decode())}
        exported = {s.labels["container"] for s in families["quicmesh_container_capacity"].samples}
        assert {st.name for st in a.registry.snapshot()} <= exported
        assert [s.value for s in families["quicmesh_connections"].samples] == [1.0]
    finally:
        await b.stop()
        await a.stop()
    with pytest.raises(OSError):
        await get(address, "/live")


async def test_a_node_process_reports_its_http_address() -> None:
    from quicmesh.testing.process import NodeProcess

    node = await NodeProcess.spawn("obs", realm="obs", extra=["--http", "127.0.0.1:0"])
    try:
        assert node.http is not None and node.http.startswith("127.0.0.1:")
        doc = json.loads((await get(node.http, "/health"))[2])
        assert doc["node_id"] == node.node_id
    finally:
        await node.stop()
    plain = await NodeProcess.spawn("plain", realm="obs")
    try:
        assert plain.http is None  # off by default
    finally:
        await plain.stop()
