"""The HTTP face (#15): real clients (curl, an aiohttp WebSocket client in another process) publish,
subscribe and call through a node of a QUIC mesh on loopback; slow consumers are closed and
counted; bounds answer with typed JSON errors; the OpenAPI document lists the routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from storekit import hold_loads

from quicmesh.config import HttpApiConfig, NodeConfig, load_config
from quicmesh.runtime.http_api import HttpFace, error_name, error_status
from quicmesh.runtime.http_openapi import ERROR_STATUSES
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

CURL = shutil.which("curl")
PIPE = asyncio.subprocess.PIPE

pytestmark = pytest.mark.timeout(120)


async def curl(*args: str, timeout: float = 20.0) -> tuple[int, bytes]:
    """Run curl; returns (HTTP status, body)."""
    assert CURL is not None, "curl is needed (.ci/run installs it)"
    proc = await asyncio.create_subprocess_exec(
        CURL, "-s", "-S", "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout), *args,
        stdout=PIPE, stderr=PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 10)
    body, _, code = out.rpartition(b"\n")
    assert code.isdigit(), (out, err)
    return int(code), body


def error_of(body: bytes) -> dict[str, object]:
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc["error"], str) and isinstance(doc["message"], str), doc
    return doc


@dataclass
class Mesh:
    face_node: Node
    other: Node

    @property
    def api(self) -> str:
        assert self.face_node.http_api_address is not None
        return f"http://{self.face_node.http_api_address}/v1"

    @property
    def face(self) -> HttpFace:
        assert self.face_node.http_face is not None
        return self.face_node.http_face


@contextlib.asynccontextmanager
async def mesh(**api: object) -> AsyncIterator[Mesh]:
    """Node A (HTTP face on its own address, /metrics on another) and node B joined to it, over QUIC."""
    a = await Node.start(NodeConfig(realm="face", http="127.0.0.2:0",
                                    http_api=HttpApiConfig(listen="127.0.0.1:0", **api)))  # type: ignore[arg-type]
    b = await Node.start(NodeConfig(realm="face", bootstrap=(a.address,)))
    try:
        await a.wait_until(lambda: len(a.peers()) == 1, timeout=10)
        yield Mesh(a, b)
    finally:
        await b.stop()
        await a.stop()


async def metrics_of(node: Node) -> dict[str, float]:
    status, body = await curl(f"http://{node.http_address}/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name.startswith("quicmesh_http"):
                key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
                out[key] = s.value
    return out


class SseReader:
    """A ``curl -N`` subscriber: its events, parsed as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue(maxsize=10_000)
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, *headers: str) -> SseReader:
        assert CURL is not None
        args = [CURL, "-s", "-N", "-H", "Accept: text/event-stream", *(x for h in headers for x in ("-H", h)), url]
        reader = cls(await asyncio.create_subprocess_exec(*args, stdout=PIPE, stderr=PIPE, limit=1 << 22))
        event, doc = await reader.next()
        assert event == "subscribed", (event, doc)
        return reader

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        event, data = "message", ""
        while line := await self.proc.stdout.readline():
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data = text[6:]
            elif not text and data:
                self.events.put_nowait((event, json.loads(data)))
                event, data = "message", ""

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, object]]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        self.task.cancel()


async def test_curl_publishes_subscribes_calls_and_writes_maps_through_a_node() -> None:
    async with mesh() as m:
        a, b = m.face_node, m.other
        assert a.http_api_address != a.http_address and not m.face.shared

        async def upper(payload: bytes) -> bytes:
            return payload.upper()

        await b.advertise("upper", upper)
        inbox = await b.subscribe("sensors.>")

        # curl publishes: the Python node B receives it over the mesh
        await a.wait_for_subscriber("sensors.temp", timeout=10)
        status, body = await curl("-X", "POST", "--data-binary", "21.5", f"{m.api}/publish/sensors.temp")
        assert status == 200 and json.loads(body) == {"topic": "sensors.temp", "bytes": 4}
        msg = await asyncio.wait_for(inbox.get(), 10)
        assert (msg.topic, msg.payload, msg.sender) == ("sensors.temp", b"21.5", a.id)

        # curl subscribes (SSE, curl -N): what the Python node B publishes arrives as events
        sse = await SseReader.open(f"{m.api}/subscribe/alerts.%3E")
        try:
            await b.wait_for_subscriber("alerts.fire", timeout=10)
            for i in range(3):
                await b.publish("alerts.fire", f"alarm {i}".encode())
            got = [await sse.next() for _ in range(3)]
            assert [e for e, _ in got] == ["message"] * 3
            assert [d["payload"] for _, d in got] == ["alarm 0", "alarm 1", "alarm 2"]
            assert {d["topic"] for _, d in got} == {"alerts.fire"} and {d["sender"] for _, d in got} == {str(b.id)}
            assert m.face.streams.open_streams == 1
        finally:
            await sse.close()
        await eventually(lambda: m.face.streams.open_streams == 0, what="the stream is released when curl leaves")

        # curl calls a procedure B provides
        await a.wait_for_provider("upper", timeout=10)
        status, body = await curl("-X", "POST", "--data-binary", "hello mesh", f"{m.api}/call/upper?timeout=5")
        assert (status, body) == (200, b"HELLO MESH")

        # maps: PUT then GET; a missing key is 404 KeyNotFound
        status, body = await curl("-X", "PUT", "--data-binary", "on", f"{m.api}/kv/settings/light")
        assert status == 200 and json.loads(body) == {"map": "settings", "key": "light", "bytes": 2}
        assert await curl(f"{m.api}/kv/settings/light") == (200, b"on")
        status, body = await curl(f"{m.api}/kv/settings/door")
        assert status == 404 and error_of(body)["error"] == "KeyNotFound"
        # the map is a replicated map of the node: B reads what curl wrote
        settings = await b.kv("settings")
        await eventually(lambda: settings.get("light"), until=lambda v: v == b"on", what="B sees the write")
        await settings.close()

        # typed errors with their status codes
        status, body = await curl("-X", "POST", "--data-binary", "x", f"{m.api}/publish/bad..topic")
        assert status == 400 and error_of(body)["error"] == "InvalidTopic"
        status, body = await curl("-X", "POST", "--data-binary", "x", f"{m.api}/call/nobody?timeout=0.5")
        assert status == 503 and error_of(body)["error"] == "NoProvider"
        status, body = await curl("-X", "POST", f"{m.api}/call/upper?timeout=soon")
        assert status == 400 and error_of(body)["error"] == "BadRequest"
        status, body = await curl(f"{m.api}/publish/a.b")
        assert status == 405 and error_of(body)["error"] == "MethodNotAllowed"
        status, body = await curl(f"{m.api}/nothing/here")
        assert status == 404 and error_of(body)["error"] == "NotFound"

        counters = await metrics_of(a)
        assert counters["quicmesh_http_api_streams_opened_total"] == 1
        assert counters["quicmesh_http_api_streams"] == 0
        assert counters["quicmesh_http_api_messages_streamed_total"] == 3
        assert counters["quicmesh_http_api_responses_total{code=2xx}"] == 5  # publish, SSE, call, PUT, GET
        assert counters["quicmesh_http_api_responses_total{code=4xx}"] == 5
        assert counters["quicmesh_http_api_responses_total{code=5xx}"] == 1  # NoProvider
        await inbox.close()


def test_an_error_is_named_by_its_nearest_public_class() -> None:
    """A call whose callee answered that its handler ran out of time fails with the core's
    ``HandlerTimedOut``, a ``CallTimeout``: whichever of the caller's deadline and the callee's
    answer comes first, the face names it ``CallTimeout`` (CI once got ``HandlerTimedOut``, a name
    the API does not list); a refused call is ``PermissionDenied``; errors from elsewhere keep
    their own name."""
    from quicmesh.core.rpc import CallDenied, HandlerTimedOut
    from quicmesh.errors import CallTimeout

    assert error_name(HandlerTimedOut("stall on x: handler exceeded 0.300s")) == "CallTimeout"
    assert error_status(HandlerTimedOut("x")) == 504
    assert error_name(CallTimeout("x")) == "CallTimeout"
    assert error_name(CallDenied("secret.op")) == "PermissionDenied"
    assert error_name(ValueError("x")) == "ValueError"
    listed = set(ERROR_STATUSES)
    for exc in (HandlerTimedOut("x"), CallDenied("y")):
        assert error_name(exc) in listed, (exc, listed)


async def test_a_call_that_outlives_its_timeout_is_504_and_the_timeout_is_clamped() -> None:
    async with mesh() as m:
        a, b = m.face_node, m.other
        release = asyncio.Event()

        async def stall(payload: bytes) -> bytes:
            await release.wait()
            return payload

        await b.advertise("stall", stall)
        await a.wait_for_provider("stall", timeout=10)
        status, body = await curl("-X", "POST", "--data-binary", "x", f"{m.api}/call/stall?timeout=0.3")
        assert status == 504 and error_of(body)["error"] == "CallTimeout"
        assert m.face_node.gateway.budgets.clamp_timeout(1e9) == a.config.gateway.max_client_call_timeout
        release.set()


WS_CLIENT = r"""
import asyncio, json, sys
import aiohttp

async def main(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            seen = 0
            async for frame in ws:
                print(frame.data, flush=True)
                if json.loads(frame.data)["event"] == "message":
                    seen += 1
                    if seen == count:
                        return

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_websocket_client_in_another_process_receives_what_a_python_node_publishes() -> None:
    async with mesh() as m:
        b = m.other
        url = m.api.replace("http://", "ws://") + "/subscribe/news.*"
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WS_CLIENT, url, "5", stdout=PIPE, stderr=PIPE)
        try:
            assert proc.stdout is not None
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
            assert first == {"event": "subscribed", "pattern": "news.*"}
            await b.wait_for_subscriber("news.today", timeout=10)
            for i in range(5):
                await b.publish("news.today", f"headline {i}".encode())
            frames = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in range(5)]
            assert [f["payload"] for f in frames] == [f"headline {i}" for i in range(5)]
            assert {(f["event"], f["topic"], f["sender"]) for f in frames} == {("message", "news.today", str(b.id))}
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await eventually(lambda: m.face.streams.open_streams == 0, what="the WebSocket stream is released")
        assert m.face.stats.streams_opened_total == 1 and m.face.stats.messages_streamed_total == 5


class _Flood:
    """Publishes ``payload`` on ``feed.data`` a few messages per step (2,000 at most) and returns the
    face's count of slow consumers closed, for :func:`eventually`."""

    def __init__(self, node: Node, face: HttpFace, payload: bytes) -> None:
        self.node, self.face, self.payload = node, face, payload
        self.sent = 0

    async def step(self) -> int:
        for _ in range(4):
            if self.sent < 2_000:
                await self.node.publish("feed.data", self.payload)
                self.sent += 1
        return self.face.stats.slow_consumers_closed_total


async def test_a_slow_sse_consumer_is_closed_and_counted_and_a_fast_one_goes_on() -> None:
    async with mesh(stream_queue_size=8, write_timeout=60.0) as m:
        a = m.face_node
        host, _, port = (a.http_api_address or "").rpartition(":")
        # the slow consumer: a raw socket with a small receive buffer that stops reading after the head
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        await asyncio.get_running_loop().sock_connect(slow, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=slow)
        writer.write(f"GET /v1/subscribe/feed.%3E HTTP/1.1\r\nHost: {host}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"event: subscribed\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        fast = await SseReader.open(f"{m.api}/subscribe/feed.%3E")
        try:
            assert m.face.streams.open_streams == 2
            flood = _Flood(a, m.face, b"x" * 65_536)
            closed = await eventually(flood.step, timeout=60, what="the slow consumer is closed")
            sent = flood.sent
            assert closed == 1
            await eventually(lambda: m.face.streams.open_streams == 1, what="the slow stream is released")
            # the slow socket is cut: after what the kernel buffered, EOF or a reset
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(reader.read(1 << 20), 10):
                    pass
            # the fast consumer got every message and still receives
            await a.publish("feed.data", b"last")
            seen = 0
            while True:
                _, doc = await fast.next()
                seen += 1
                if doc["payload"] == "last":
                    break
            assert seen == sent + 1
            counters = await metrics_of(a)
            assert counters["quicmesh_http_slow_consumers_closed_total"] == 1
            print(f"\nslow SSE consumer closed after {sent} messages of 64 KiB (queue 8); "
                  f"the fast one received {seen} of {sent + 1}")
        finally:
            writer.close()
            await fast.close()


async def test_a_websocket_consumer_that_stops_reading_is_closed_and_counted() -> None:
    import aiohttp

    async with mesh(stream_queue_size=8, write_timeout=60.0) as m:
        a = m.face_node
        url = m.api.replace("http://", "ws://") + "/subscribe/feed.%3E"
        async with aiohttp.ClientSession(read_bufsize=4096) as session:
            ws = await session.ws_connect(url, max_msg_size=1 << 20)
            first = await ws.receive_json(timeout=10)
            assert first == {"event": "subscribed", "pattern": "feed.>"}
            flood = _Flood(a, m.face, b"w" * 65_536)  # the client reads nothing from now on
            assert await eventually(flood.step, timeout=60, what="the WebSocket consumer is closed") == 1
            sent = flood.sent
            await eventually(lambda: m.face.streams.open_streams == 0, what="the stream is released")
            # what the client finds when it reads again: buffered frames, then the end of the connection
            kinds: set[aiohttp.WSMsgType] = set()
            for _ in range(5_000):
                msg = await ws.receive(timeout=10)
                kinds.add(msg.type)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            assert kinds & {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}
            await ws.close()
        print(f"\nWebSocket consumer that stopped reading closed after {sent} messages of 64 KiB (queue 8)")
        assert (await metrics_of(a))["quicmesh_http_slow_consumers_closed_total"] == 1


async def test_bounds_answer_with_typed_errors() -> None:
    async with mesh(max_streams=1, max_body_bytes=1024, max_pending_bytes=1500, read_timeout=1.0) as m:
        a, b = m.face_node, m.other
        # body over max_body_bytes: 413 (declared length, and a chunked body counted as it arrives)
        status, body = await curl("-X", "POST", "--data-binary", "y" * 2000, f"{m.api}/publish/big.one")
        assert status == 413 and error_of(body)["error"] == "MessageTooLarge"
        status, body = await curl("-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary", "y" * 2000,
                                  f"{m.api}/publish/big.one")
        assert status == 413 and error_of(body)["error"] == "MessageTooLarge"
        # streams past max_streams: 429 naming the limit
        sse = await SseReader.open(f"{m.api}/subscribe/one.%3E")
        try:
            status, body = await curl(f"{m.api}/subscribe/two.%3E")
            doc = error_of(body)
            assert status == 429 and doc["error"] == "LimitExceeded" and doc["limit"] == "http_api.max_streams"
        finally:
            await sse.close()
        # bytes held by calls in flight past max_pending_bytes: 429
        release = asyncio.Event()

        async def hold(payload: bytes) -> bytes:
            await release.wait()
            return b"done"

        await b.advertise("hold", hold)
        await a.wait_for_provider("hold", timeout=10)
        first = asyncio.ensure_future(curl("-X", "POST", "--data-binary", "z" * 1000, f"{m.api}/call/hold?timeout=20"))
        await eventually(lambda: m.face.pending_bytes == 1000, what="the first call holds its bytes")
        status, body = await curl("-X", "POST", "--data-binary", "z" * 1000, f"{m.api}/call/hold")
        doc = error_of(body)
        assert status == 429 and doc["limit"] == "http_api.max_pending_bytes"
        release.set()
        assert await first == (200, b"done")
        assert m.face.pending_bytes == 0
        # a body that does not arrive within read_timeout: 408
        host, _, port = (a.http_api_address or "").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/publish/slow.body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
        data = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ") and b'"RequestTimeout"' in data


async def test_openapi_document_parses_and_lists_every_route() -> None:
    async with mesh() as m:
        status, body = await curl(f"{m.api}/openapi.json")
        assert status == 200
        doc = json.loads(body)
        assert doc["openapi"].startswith("3.") and doc["info"]["title"]
        validate(doc)  # openapi-spec-validator: a valid OpenAPI 3 document
        routes: set[tuple[str, str]] = set()
        for resource in m.face.server.app.router.resources():
            path = resource.canonical.replace("{key:.+}", "{key}")
            if path.startswith("/v1/"):
                routes |= {(path, r.method.lower()) for r in resource}
        documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
        assert documented == routes
        assert {"/v1/publish/{topic}", "/v1/subscribe/{pattern}", "/v1/call/{name}", "/v1/kv/{map}/{key}",
                "/v1/openapi.json"} == set(doc["paths"])
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, (path, method)
                for code in op["responses"]:
                    assert code.isdigit()
        assert ERROR_STATUSES["NoProvider"][0] == 503 and ERROR_STATUSES["CallTimeout"][0] == 504


async def test_shared_address_serves_monitoring_and_the_face_on_one_server() -> None:
    cfg = load_config(env={"QUICMESH_HTTP": "127.0.0.1:0", "QUICMESH_HTTP_API__LISTEN": "127.0.0.1:0",
                           "QUICMESH_REALM": "face"})
    assert cfg.http_api.listen == "127.0.0.1:0" and NodeConfig().http_api.listen is None  # off by default
    a = await Node.start(cfg)
    try:
        assert a.http_api_address == a.http_address and a.http_face is not None and a.http_face.shared
        assert a.http_face.server.max_connections == (cfg.observability.http_max_connections
                                                      + cfg.http_api.max_connections)
        assert (await curl(f"http://{a.http_address}/live")) == (200, b"ok\n")
        status, body = await curl(f"http://{a.http_address}/v1/openapi.json")
        assert status == 200 and "/v1/call/{name}" in json.loads(body)["paths"]
    finally:
        await a.stop()
    plain = await Node.start(NodeConfig(realm="face", http="127.0.0.1:0"))
    try:
        assert plain.http_face is None and plain.http_api_address is None
        status, body = await curl(f"http://{plain.http_address}/v1/openapi.json")
        assert status == 404  # off by default: the monitoring endpoint alone
    finally:
        await plain.stop()


@pytest.mark.processes
async def test_a_node_process_serves_the_face_next_to_its_metrics() -> None:
    from quicmesh.testing.process import NodeProcess

    node = await NodeProcess.spawn("face", realm="face", extra=["--http", "127.0.0.1:0", "--http-api", "127.0.0.1:0"])
    try:
        assert node.http is not None
        status, body = await curl("-X", "PUT", "--data-binary", "1", f"http://{node.http}/v1/kv/m/k")
        assert status == 200, body
        assert await curl(f"http://{node.http}/v1/kv/m/k") == (200, b"1")
        status, body = await curl(f"http://{node.http}/metrics")
        assert status == 200 and b"quicmesh_http_api_responses_total" in body
    finally:
        await node.stop()


async def test_a_map_open_cut_short_by_its_client_fails_no_other_request() -> None:
    """The HTTP face (no lab needed): a map is opened by the first request that names it, loaded
    from the store meanwhile. When that request's client leaves (the handler is cancelled, as
    the face's server cancels the handlers of closed connections), the other requests waiting
    for the same map still get their answers. Found by the set test above: a node restarted on
    a loaded machine read its store slowly, a writer's PUT timed out and left, and a concurrent
    ``GET`` answered 503 ``NodeClosed`` "cancelled" from a node that was running."""
    node = await Node.start(NodeConfig(realm="plain", http_api=HttpApiConfig(listen="127.0.0.1:0")))
    face = node.http_face
    assert face is not None
    held = hold_loads(node)  # the store read, held until the test lets it go
    gate, entered = held.gate, held.entered
    calls: list[str] = []  # how each request's wait for the map ended
    open_map = face._map

    async def counted(name: str) -> Any:
        calls.append("waiting")
        i = len(calls) - 1
        try:
            handle = await open_map(name)
        except BaseException as exc:
            calls[i] = type(exc).__name__
            raise
        calls[i] = "opened"
        return handle

    face._map = counted  # type: ignore[method-assign]
    url = f"http://{node.http_api_address}/v1/kv/m/k"
    try:
        async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
            a = asyncio.ensure_future(first.get(url))
            await eventually(entered.is_set, timeout=10, what="the first request opening the map")
            b = asyncio.ensure_future(second.get(url))
            await eventually(lambda: len(calls) == 2, timeout=10, what="the second request waiting for the map")
            await first.close()  # the first client leaves: its connection closes, its handler is cancelled
            with contextlib.suppress(aiohttp.ClientError):
                await asyncio.wait_for(a, 10)
            await eventually(lambda: calls[0] != "waiting", timeout=10, what="the first request's handler ending")
            gate.set()
            resp = await asyncio.wait_for(b, 10)
            body = await resp.read()
            assert (resp.status, json.loads(body)["error"]) == (404, "KeyNotFound"), (resp.status, body, calls)
            async with second.put(url, data=b"v") as put:
                assert put.status == 200
            async with second.get(url) as get:
                assert (get.status, await get.read()) == (200, b"v")
        print(f"a map open cut short by its client: the requests ended {calls}; the waiting one got 404 KeyNotFound")
    finally:
        gate.set()
        await node.stop()
