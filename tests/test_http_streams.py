"""The HTTP face's streams share node subscriptions (``quicmesh.runtime.http_streams``): against a
stub node (one encoding per message for every stream, per-stream permission filters, a slow
member closed alone, messages the shared queue dropped close every member, a failed open refuses
each waiting stream, the last stream closes the subscription) and through a real node and real
clients (SSE and WebSocket streams to one pattern, one node subscription, all of them receiving,
the slot cap not raced), and WebSocket frames built once and written together (every length
encoding read whole by aiohttp's client, compression when configured, a consumer that stops
reading stalls its write and is closed)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import aiohttp.web
import pytest
from test_gateway_subs import StubNode
from test_http_api import SseReader, curl, mesh, metrics_of
from test_http_api import _Flood as Flood

from quicmesh.bounded import Overflow
from quicmesh.bounded.aio import BoundedQueue
from quicmesh.config import HttpApiConfig
from quicmesh.core.permissions import Permissions
from quicmesh.errors import LimitExceeded
from quicmesh.observability.http import HttpFaceStats
from quicmesh.runtime.http_streams import StreamHub, _Fan, _sse_message, _Stream, ws_text_frame
from quicmesh.runtime.message import Message
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually


class Counting:
    """An encoding that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, msg: Message) -> bytes:
        self.calls += 1
        return _sse_message(msg)


def hub(queue: int = 4) -> tuple[StreamHub, StubNode]:
    node = StubNode()
    return StreamHub(node, HttpApiConfig(stream_queue_size=queue), HttpFaceStats()), node  # type: ignore[arg-type]


def stream(encode: Any = _sse_message, flt: Permissions | None = None, queue: int = 4) -> tuple[_Stream, list[int]]:
    aborted: list[int] = []
    q: BoundedQueue[bytes | str] = BoundedQueue("http_api.stream_queue", queue, Overflow.DROP_NEWEST)
    return _Stream("a.>", q, lambda: aborted.append(1), flt, encode), aborted


def fan_of(h: StreamHub) -> _Fan:
    fan = h._fans.get("a.>")
    if fan is None:
        fan = h._fans["a.>"] = _Fan(h, "a.>")
    return fan


def queued(s: _Stream) -> list[int]:
    out = []
    while len(s.queue):
        item = s.queue.get_nowait()
        assert isinstance(item, bytes)
        out.append(int(item.split(b"\n")[0].removeprefix(b"id: ")))
    return out


async def test_one_encoding_per_message_for_every_stream_and_filters_per_stream() -> None:
    h, node = hub(queue=16)
    enc = Counting()
    secret = Permissions.parse(["subscribe:a.>"], ["subscribe:a.secret"])
    s1, _ = stream(enc, queue=16)
    s2, _ = stream(enc, secret, queue=16)
    s3, _ = stream(queue=16)
    fan = fan_of(h)
    for s in (s1, s2, s3):
        await fan.join(s)
    assert len(node.subs) == 1 and h.node_subscriptions == 1
    sub = node.subs[0]
    for seq, topic in enumerate(("a.x", "a.secret", "a.y"), 1):
        sub.feed(topic, b"p", seq)
    await eventually(lambda: len(s3.queue) == 3, what="the messages are queued")
    assert queued(s1) == [1, 2, 3] and queued(s2) == [1, 3] and queued(s3) == [1, 2, 3]
    assert enc.calls == 3  # three messages encoded once for the two streams that share the encoding
    # a stream that joins the open fan gets what is read after it joined
    s4, _ = stream(queue=16)
    await fan.join(s4)
    sub.feed("a.z", b"p", 4)
    await eventually(lambda: len(s4.queue) == 1, what="the late stream's message")
    assert queued(s4) == [4] and queued(s1) == [4]
    for s in (s1, s2, s3):
        fan.leave(s)
    assert not sub.closed and h._fans["a.>"] is fan
    fan.leave(s4)  # the last one: the node subscription closes, the pattern is free for a new fan
    assert "a.>" not in h._fans and h.node_subscriptions == 0
    await eventually(lambda: sub.closed, what="the node subscription closes")
    assert fan.task is None


async def test_a_slow_stream_is_closed_alone_and_a_drop_closes_every_stream() -> None:
    h, node = hub(queue=2)
    slow, slow_aborted = stream(queue=2)
    fast, fast_aborted = stream(queue=64)
    fan = fan_of(h)
    await fan.join(slow)
    await fan.join(fast)
    sub = node.subs[0]
    for seq in range(1, 6):
        sub.feed("a.x", b"p", seq)
    await eventually(lambda: len(fast.queue) == 5, what="the fast stream's messages")
    assert slow_aborted == [1] and slow.queue.closed and not fast_aborted
    assert h._stats.slow_consumers_closed_total == 1
    assert queued(fast) == [1, 2, 3, 4, 5]
    sub.feed("a.x", b"p", 6)  # the closed stream is skipped until its handler leaves
    await eventually(lambda: len(fast.queue) == 1, what="the next message")
    assert queued(slow) == [1, 2] and slow_aborted == [1]
    # the shared node queue dropped a message: every member missed it, so every member is closed
    sub.dropped = 1
    sub.feed("a.x", b"p", 8)
    await eventually(lambda: fast.queue.closed, what="the drop closes the stream")
    assert fast_aborted == [1] and h._stats.slow_consumers_closed_total == 2


async def test_a_failed_open_refuses_each_waiting_stream_and_the_next_stream_tries_again() -> None:
    h, node = hub()
    node.gate = asyncio.Event()
    node.fail = LimitExceeded("pubsub.max_subscriptions", 1)
    s1, _ = stream()
    s2, _ = stream()
    fan = fan_of(h)
    waits = [asyncio.ensure_future(fan.join(s)) for s in (s1, s2)]
    await asyncio.sleep(0)
    node.gate.set()
    for w in waits:
        try:
            await w
        except LimitExceeded as exc:
            assert exc.limit == "pubsub.max_subscriptions"
        else:
            raise AssertionError("the join should fail")
    assert "a.>" not in h._fans
    for s in (s1, s2):
        fan.leave(s)
    node.fail = None
    s3, _ = stream()
    again = fan_of(h)
    assert again is not fan
    await again.join(s3)
    assert len(node.subs) == 1 and h.node_subscriptions == 1


async def test_streams_to_one_pattern_share_one_node_subscription_through_a_real_face() -> None:
    async with mesh() as m:
        a, b = m.face_node, m.other
        readers = [await SseReader.open(f"{m.api}/subscribe/news.%3E") for _ in range(3)]
        other = await SseReader.open(f"{m.api}/subscribe/sport.%3E")
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(m.api.replace("http://", "ws://") + "/subscribe/news.%3E")
            assert await ws.receive_json(timeout=10) == {"event": "subscribed", "pattern": "news.>"}
            try:
                assert m.face.streams.open_streams == 5 and m.face.streams.node_subscriptions == 2
                assert (await metrics_of(a))["quicmesh_http_api_stream_subscriptions"] == 2
                await b.wait_for_subscriber("news.today", timeout=10)
                for i in range(20):
                    await b.publish("news.today", b"headline %d" % i)
                want = [f"headline {i}" for i in range(20)]
                for r in readers:
                    got = [(await r.next())[1]["payload"] for _ in range(20)]
                    assert got == want
                frames = [json.loads((await ws.receive(timeout=10)).data) for _ in range(20)]
                assert [f["payload"] for f in frames] == want
                assert other.events.empty()
            finally:
                await ws.close()
                for r in readers:
                    await r.close()
            # the last stream to news.> gone: the node no longer subscribes to it; sport.> goes on
            await eventually(lambda: m.face.streams.node_subscriptions == 1, what="the news fan ends")
            await eventually(lambda: "news.>" not in a.subscribed_patterns(), what="the node unsubscribes")
            assert "sport.>" in a.subscribed_patterns()
            await other.close()
            await eventually(lambda: m.face.streams.open_streams == 0, what="every stream is released")
        assert m.face.stats.messages_streamed_total == 80
        print("\n4 streams to news.> (3 SSE, 1 WebSocket) held 1 node subscription; 20 of 20 messages each")


async def test_requests_racing_for_the_last_stream_slots_do_not_pass_the_cap() -> None:
    async with mesh(max_streams=2) as m:
        runs = [curl(f"{m.api}/subscribe/race.{i}", timeout=3.0) for i in range(6)]
        codes = sorted(code for code, _ in await asyncio.gather(*runs))
        assert codes == [200, 200, 429, 429, 429, 429], codes
        await eventually(lambda: m.face.streams.open_streams == 0, what="the streams are released")
        assert m.face.streams.node_subscriptions == 0


# -- WebSocket frames built once and written together (#14) -------------------------------------


async def ws_subscribe(session: aiohttp.ClientSession, api: str, pattern: str, *, max_msg_size: int = 1 << 20,
                       compress: int = 0) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket subscription to ``pattern`` (``%``-quoted) of the face at ``api``, past its
    ``subscribed`` event; ``compress=15`` offers ``permessage-deflate``."""
    ws = await session.ws_connect(api.replace("http://", "ws://") + "/subscribe/" + pattern,
                                  max_msg_size=max_msg_size, compress=compress)
    assert await ws.receive_json(timeout=10) == {"event": "subscribed", "pattern": pattern.replace("%3E", ">")}
    return ws


async def ws_published(ws: aiohttp.ClientWebSocketResponse, node: Node, topic: str,
                       payloads: list[bytes]) -> list[bytes]:
    """``node`` publishes ``payloads`` to ``topic`` once it sees the stream's subscription; the
    payloads of as many messages read from ``ws``, in order."""
    await node.wait_for_subscriber(topic, timeout=10)
    for p in payloads:
        await node.publish(topic, p)
    return [json.loads((await ws.receive(timeout=10)).data)["payload"].encode() for _ in payloads]


async def test_ws_text_frame_is_read_whole_by_aiohttp_at_every_length_encoding() -> None:
    """Frames written raw by a server (7-, 16- and 64-bit lengths, at their edges, several in one
    write) are read by aiohttp's client as the texts they carry."""
    texts = ["", "a" * 125, "b" * 126, "é" * 40_000, "c" * 65_535, "d" * 65_536, "e" * 200_000]

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.WebSocketResponse:
        ws = aiohttp.web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(b"".join(ws_text_frame(t.encode()) for t in texts))
        await ws.receive()  # until the client closes
        return ws

    app = aiohttp.web.Application()
    app.router.add_get("/", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://127.0.0.1:{port}/",
                                                                          max_msg_size=1 << 20) as ws:
            got = [await ws.receive(timeout=10) for _ in texts]
            assert [m.type for m in got] == [aiohttp.WSMsgType.TEXT] * len(texts)
            assert [m.data for m in got] == texts
    finally:
        await runner.cleanup()


async def test_websocket_messages_of_every_size_arrive_whole_and_in_order_uncompressed() -> None:
    sizes = [1, 30, 200, 20_000, 50_000] * 40  # frames from ~250 B to ~130 KiB, 200 messages at once
    async with mesh() as m:
        b = m.other
        async with aiohttp.ClientSession() as session:
            ws = await ws_subscribe(session, m.api, "big.%3E", compress=15)  # offers permessage-deflate
            try:
                assert ws.compress == 0  # not taken: http_api.websocket_compress is off by default
                want = [(b"%d:" % i) + b"x" * n for i, n in enumerate(sizes)]
                assert await ws_published(ws, b, "big.data", want) == want
            finally:
                await ws.close()
        await eventually(lambda: m.face.streams.open_streams == 0, what="the stream is released")
        assert m.face.stats.messages_streamed_total == len(sizes)
        print(f"\n{len(sizes)} messages of 1 B to 50 KB over one WebSocket: all whole, in order")


async def test_websocket_compression_is_offered_when_configured() -> None:
    async with mesh(websocket_compress=True) as m:
        b = m.other
        async with aiohttp.ClientSession() as session:
            ws = await ws_subscribe(session, m.api, "z.%3E", compress=15)
            try:
                assert ws.compress == 15  # permessage-deflate taken
                want = [b"zip %d " % i + b"y" * (i * 100) for i in range(50)]
                assert await ws_published(ws, b, "z.data", want) == want
            finally:
                await ws.close()


async def test_a_websocket_consumer_that_stops_reading_stalls_its_write_and_is_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    """The frames go to the transport without aiohttp's writer, so its flow control is this
    module's: with a queue longer than the flood, only a write that waits for the transport to
    drain (and stalls past ``write_timeout``) closes the consumer; a write that did not wait would
    buffer the whole flood (2,000 x ~150 KiB) in the node."""
    caplog.set_level(logging.INFO, logger="quicmesh.http_api")
    async with mesh(stream_queue_size=4096, write_timeout=1.0) as m:
        a = m.face_node
        async with aiohttp.ClientSession(read_bufsize=4096) as session:
            ws = await ws_subscribe(session, m.api, "feed.%3E")
            flood = Flood(a, m.face, b"w" * 65_536)  # the client reads nothing from now on
            assert await eventually(flood.step, timeout=60, what="the WebSocket consumer is closed") == 1
            await eventually(lambda: m.face.streams.open_streams == 0, what="the stream is released")
            await ws.close()
        reasons = [r.getMessage() for r in caplog.records if "slow consumer" in r.getMessage()]
        assert len(reasons) == 1 and "a write stalled for 1s" in reasons[0], reasons
        assert flood.sent < 2_000
        print(f"\nWebSocket consumer that stopped reading: its write stalled and it was closed after "
              f"{flood.sent} messages of 64 KiB (queue 4096, write_timeout 1 s)")
