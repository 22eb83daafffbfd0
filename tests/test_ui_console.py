"""The web console's server side (``/ui``, ``/ui/state``, ``/ui/events``): headers, the snapshot,
the bounds of the event streams, the denial ring. The browser test is tests/test_ui_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import aiohttp
import pytest

from quicmesh import Node, NodeConfig
from quicmesh.bounded import BoundedDeque, ContainerRegistry
from quicmesh.core.guard import RECENT_DENIALS
from quicmesh.observability import NodeGauges
from quicmesh.observability.http import HttpEndpoint
from quicmesh.observability.ui_console import CSP
from quicmesh.testing.wait import eventually


async def echo(payload: bytes) -> bytes:
    return payload


@contextlib.asynccontextmanager
async def node(**kw: Any) -> AsyncIterator[Node]:
    n = await Node.start(NodeConfig(realm="ui-console", http="127.0.0.1:0", **kw))
    try:
        yield n
    finally:
        await n.stop()


def console_of(n: Node) -> Any:
    assert n.observability is not None and isinstance(n.observability.endpoint, HttpEndpoint)
    return n.observability.endpoint.console


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
        assert r.headers["Content-Security-Policy"] == CSP
        return await r.json()


async def test_page_and_assets_are_served_with_a_restrictive_csp() -> None:
    async with node() as a, aiohttp.ClientSession() as s:
        base = f"http://{a.http_address}"
        for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css"),
                           ("/ui/favicon.svg", "image/svg+xml")):
            async with s.get(base + path) as r:
                body = await r.text()
                assert r.status == 200, path
                assert r.headers["Content-Type"].startswith(kind)
                assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert body
        async with s.get(base + "/ui/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/ui"
        async with s.post(base + "/ui/state") as r:
            assert r.status == 405
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "frame-ancestors 'none'" in CSP


def test_the_page_never_writes_network_strings_as_html() -> None:
    ui = resources.files("quicmesh.observability").joinpath("ui")
    js = ui.joinpath("app.js").read_text()
    html = ui.joinpath("index.html").read_text()
    sinks = [s for s in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(")
             if s in js]
    assert sinks == [], f"HTML/script sinks in app.js: {sinks}"
    assert "textContent" in js
    # no inline script or style (the CSP would block them), nothing from another origin
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


async def test_state_lists_peers_topics_services_and_containers() -> None:
    async with node() as a:
        sub = await a.subscribe("orders.>")
        await a.advertise("quote", echo)
        url = f"http://{a.http_address}/ui/state"
        doc = await get_json(url)
        assert doc["node_id"] == str(a.id) and doc["realm"] == {"mode": "open", "name": "ui-console"}
        assert doc["peers"] == [] and doc["peers_total"] == 0
        assert [x["pattern"] for x in doc["subscriptions"]] == ["orders.>"] and sub.topic == "orders.>"
        assert "orders" in [t["swarm"] for t in doc["topics"]]
        assert [(x["name"], x["local"], x["providers"]) for x in doc["services"]] == [("quote", True, [str(a.id)])]
        fills = {c["name"]: c for c in doc["containers"]}
        assert "mesh.swarms" in fills and {"size", "capacity", "fill"} <= set(fills["mesh.swarms"])
        assert doc["sentinel"]["status"] in ("ok", "degraded")
        async with node(bootstrap=(a.address,)) as b:
            doc = await eventually(lambda: get_json(url), until=lambda d: d["peers_total"] == 1, timeout=15)
            assert [(p["id"], p["path"]) for p in doc["peers"]] == [(str(b.id), "direct")]


async def test_denials_keep_the_newest_fifty() -> None:
    async with node() as a:
        guard = a.core.guard
        for i in range(RECENT_DENIALS + 10):
            guard.deny("publish", f"<b>t{i}</b>" + "x" * 300)
        doc = await get_json(f"http://{a.http_address}/ui/state")
        den = doc["denials"]
        assert den["total"] == RECENT_DENIALS + 10 and den["by_action"]["publish"] == RECENT_DENIALS + 10
        assert len(den["recent"]) == RECENT_DENIALS == len(guard.recent_denials)
        assert den["recent"][0]["n"] == RECENT_DENIALS + 10 and den["recent"][-1]["n"] == 11  # newest first
        assert den["recent"][0]["subject"].startswith("<b>t59</b>") and len(den["recent"][0]["subject"]) == 200
        print(f"{RECENT_DENIALS + 10} denials counted, the newest {len(den['recent'])} listed")


async def read_event(resp: aiohttp.ClientResponse) -> bytes:
    """The data line of the next ``state`` event."""
    while True:
        line = await resp.content.readline()
        assert line, "stream ended"
        if line.startswith(b"data: "):
            return line


async def test_event_streams_are_capped_and_end_by_themselves() -> None:
    async with node() as a, aiohttp.ClientSession() as s:
        console = console_of(a)
        console.max_streams = 2
        url = f"http://{a.http_address}/ui/events"
        async with s.get(url) as r1, s.get(url) as r2:
            assert r1.status == r2.status == 200 and r1.headers["Content-Type"] == "text/event-stream"
            assert str(a.id).encode() in await read_event(r1)
            await read_event(r2)
            async with s.get(url) as r3:
                assert r3.status == 503
            assert console.refused_total == 1 and console.streams == 2
        await eventually(lambda: console.streams, until=lambda n: n == 0, timeout=10, what="streams released")
        console.max_stream_seconds = 0.3
        console.interval = 0.05
        async with s.get(url) as r:
            await read_event(r)
            async with asyncio.timeout(10):
                while await r.content.readline():
                    pass  # the server ends the stream after max_stream_seconds
        await eventually(lambda: console.streams, until=lambda n: n == 0, timeout=10)
        print(f"{console.streams_opened_total} streams opened, {console.refused_total} refused at the cap of 2")


async def test_a_consumer_that_stops_reading_is_closed_and_counted() -> None:
    async with node() as a:
        console = console_of(a)
        console.interval = 0.001
        console.write_timeout = 0.3
        host, port = str(a.http_address).rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            await asyncio.get_running_loop().sock_sendall(sock, b"GET /ui/events HTTP/1.1\r\nHost: x\r\n\r\n")
            # never read: the node's writes stall once the socket buffers are full
            await eventually(lambda: console.slow_closed_total, until=lambda n: n == 1, timeout=60,
                             what="the stalled console stream closed")
            await eventually(lambda: console.streams, until=lambda n: n == 0, timeout=10)
        finally:
            sock.close()
        doc = await get_json(f"http://{a.http_address}/ui/state")
        assert doc["ui"]["slow_closed_total"] == 1
        print(f"1 of 1 stalled console streams closed ({console.streams} left open)")


@pytest.mark.parametrize("path", ["/ui", "/ui/state"])
async def test_console_is_on_the_monitoring_address_only(path: str) -> None:
    async with node() as a, aiohttp.ClientSession() as s, s.get(f"http://{a.http_address}{path}") as r:
        assert r.status == 200


@dataclass
class BareNode:
    """A :class:`~quicmesh.observability.NodeView` with no ``console()``: the console shows what
    /health shows (no peer or topic lists)."""

    node_id: str = "bare-node"
    realm: str = "bare"
    registry: ContainerRegistry = field(default_factory=lambda: ContainerRegistry("bare"))

    def health(self) -> Mapping[str, Any]:
        return {}

    def gauges(self) -> NodeGauges:
        return NodeGauges(topics=1)

    def ready(self) -> tuple[bool, str]:
        return True, "ready"


async def test_a_node_without_console_view_still_gets_the_page_and_its_containers() -> None:
    bare = BareNode()
    queue: BoundedDeque[int] = BoundedDeque("bare.queue", 8, registry=bare.registry)
    for i in range(6):
        queue.append(i)
    endpoint = HttpEndpoint(bare)
    address = await endpoint.start()
    try:
        doc = await get_json(f"http://{address}/ui/state")
        assert doc["node_id"] == "bare-node" and doc["realm"]["name"] == "bare" and "peers" not in doc
        fill = {c["name"]: (c["size"], c["capacity"]) for c in doc["containers"]}
        assert fill["bare.queue"] == (6, 8)
    finally:
        await endpoint.stop()


async def test_stopping_the_node_ends_open_console_streams() -> None:
    a = await Node.start(NodeConfig(realm="ui-console", http="127.0.0.1:0"))
    stopped = False
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://{a.http_address}/ui/events") as r:
            await read_event(r)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with asyncio.timeout(10):
                await a.stop()
            stopped = True
            took = loop.time() - t0
            with contextlib.suppress(aiohttp.ClientError):
                async with asyncio.timeout(5):
                    while await r.content.readline():
                        pass
        print(f"node stopped in {took:.2f} s with a console stream open")
        assert took < 1.5 and console_of(a).streams == 0  # ended at once, not after the interval or a timeout
    finally:
        if not stopped:
            await a.stop()
