"""``quicmesh status``: tables from a live endpoint; one-line errors with a non-zero exit."""

from __future__ import annotations

import asyncio
import io
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from quicmesh.bounded import BoundedDeque, ContainerRegistry, LruMap
from quicmesh.cli.status import EXIT_ERROR, main, render_status
from quicmesh.config import ObservabilityConfig
from quicmesh.observability import HttpEndpoint, LeakSentinel, NodeGauges
from quicmesh.runtime.transport import TransportStats


@dataclass
class FakeNode:
    node_id: str = "node-status-7f3a"
    realm: str = "factory-eu"
    registry: ContainerRegistry = field(default_factory=lambda: ContainerRegistry("fake"))

    def health(self) -> Mapping[str, Mapping[str, Any]]:
        return {"address_book": {"peers": 57, "expired_total": 3}, "rpc": {"pending_calls": 2, "timeouts_total": 1}}

    def gauges(self) -> NodeGauges:
        return NodeGauges(
            peers={"active": 5, "passive": 29},
            topics=12,
            subscriptions=30,
            transport=TransportStats(connections=6, refused_total={"max_connections": 4}),
        )

    def ready(self) -> tuple[bool, str]:
        return True, "ready"


def make_node() -> tuple[FakeNode, list[Any]]:
    node = FakeNode()
    hot: BoundedDeque[int] = BoundedDeque("gossip.dial_queue", 20, registry=node.registry)
    for i in range(19):  # 95 %
        hot.append(i)
    cool: LruMap[int, int] = LruMap("gossip.seen_ids", 100, registry=node.registry)
    for i in range(50):  # 50 %
        cool[i] = i
    return node, [hot, cool]


def consoles() -> tuple[Console, io.StringIO, Console, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return (
        Console(file=out, width=160, force_terminal=False, color_system=None),
        out,
        Console(file=err, width=160, force_terminal=False, color_system=None),
        err,
    )


def row(text: str, *cells: str) -> bool:
    """``True`` when a table row holds ``cells`` (regexes) in this order, borders aside."""
    return re.search(r"[\s│]+".join(cells), text) is not None


async def run_main(argv: list[str]) -> tuple[int, str, str]:
    con, out, econ, err = consoles()
    code = await asyncio.to_thread(main, argv, console=con, err_console=econ)
    return code, out.getvalue(), err.getvalue()


async def test_status_against_a_live_endpoint() -> None:
    node, keep = make_node()
    endpoint = HttpEndpoint(node, "127.0.0.1", 0)
    address = await endpoint.start()
    try:
        code, out, err = await run_main(["--http", address])
    finally:
        await endpoint.stop()
    assert code == 0, err
    assert err == ""
    for text in ("node-status-7f3a", "factory-eu", "peers (active)", "peers (passive)", "topics", "connections"):
        assert text in out
    assert row(out, r"peers \(passive\)", "29")
    assert row(out, r"refused \(max_connections\)", "4")
    assert row(out, "address_book", "peers", "57")
    assert row(out, "rpc", "pending_calls", "2")
    # every container, with size, capacity and fill
    assert row(out, r"gossip\.dial_queue", "deque", "19", "20", r"[█░]+ +95\.0%")
    assert row(out, r"gossip\.seen_ids", "lru_map", "50", "100", r"[█░]+ +50\.0%")
    del keep


async def test_status_shows_degraded_reasons_and_exits_1() -> None:
    node, keep = make_node()
    cfg = ObservabilityConfig(near_capacity=0.9, near_capacity_for=1.0)
    sentinel = LeakSentinel(cfg, node.registry, lambda: 10_000_000)
    sentinel.sample(0.0)
    endpoint = HttpEndpoint(node, "127.0.0.1", 0, sentinel, clock=lambda: 5.0)
    address = await endpoint.start()
    try:
        code, out, _ = await run_main(["--http", address, "--timeout", "5"])
    finally:
        await endpoint.stop()
    assert code == 1
    assert "degraded" in out
    assert "[near_capacity] gossip.dial_queue" in out
    del keep


def test_fill_at_or_over_90_percent_is_highlighted() -> None:
    health = {
        "status": "ok",
        "node_id": "n",
        "realm": "r",
        "containers": {
            "hot.queue": {"kind": "deque", "size": 95, "capacity": 100, "fill": 0.95},
            "edge.queue": {"kind": "deque", "size": 90, "capacity": 100, "fill": 0.9},
            "cool.map": {"kind": "lru_map", "size": 10, "capacity": 100, "fill": 0.1},
        },
    }
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=True, color_system="standard")
    render_status(health, console)
    text = buf.getvalue()
    bold_red = "\x1b[1;31m"
    assert re.search(re.escape(bold_red) + r"hot\.queue", text)
    assert re.search(re.escape(bold_red) + r"edge\.queue", text)
    assert not re.search(re.escape(bold_red) + r"cool\.map", text)
    assert re.search(re.escape(bold_red) + r"[█░]+\s+95\.0%", text)
    assert not re.search(re.escape(bold_red) + r"[█░]+\s+10\.0%", text)


def test_narrow_terminal_keeps_names_and_numbers_whole() -> None:
    names = [f"subsystem.structure_with_a_long_name_{i}" for i in range(3)]
    health = {
        "status": "ok",
        "node_id": "n",
        "realm": "r",
        "containers": {
            n: {"kind": "lru_map", "size": 9_500 + i, "capacity": 10_000, "fill": 0.95} for i, n in enumerate(names)
        },
    }
    buf = io.StringIO()
    render_status(health, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for i, n in enumerate(names):
        assert row(text, re.escape(n), f"9,50{i}/10,000", r"[█░]+ +95\.0%")


async def test_connection_refused_is_one_line_and_non_zero() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = await run_main(["--http", f"127.0.0.1:{port}", "--timeout", "2"])
    assert code == EXIT_ERROR
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("quicmesh status: cannot reach 127.0.0.1:") and "refused" in err.lower()


async def serve_raw(response: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_bad_json_and_http_errors_are_one_line_and_non_zero() -> None:
    cases = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!", "invalid JSON"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\n[1,2,3]", "not a quicmesh health"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "HTTP 404"),
    ]
    for response, expected in cases:
        server, address = await serve_raw(response)
        try:
            code, out, err = await run_main(["--http", address])
        finally:
            server.close()
            await server.wait_closed()
        assert code == EXIT_ERROR
        assert out == ""
        assert err.count("\n") == 1 and expected in err, err


async def test_bad_address_and_timeout() -> None:
    code, _, err = await run_main(["--http", "no-port-here"])
    assert code == EXIT_ERROR and "expected HOST:PORT" in err

    # a server that accepts but never answers: the timeout fires
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        code, _, err = await run_main(["--http", address, "--timeout", "0.3"])
    finally:
        server.close()
        await server.wait_closed()
    assert code == EXIT_ERROR and "timed out" in err
