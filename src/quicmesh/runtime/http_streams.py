"""Subscriptions of the HTTP face: Server-Sent Events and WebSocket streams, each bounded.

Theory of operation
-------------------
``GET /v1/subscribe/{pattern}`` opens one stream: a WebSocket when the request asks to upgrade,
else Server-Sent Events. :class:`StreamHub` holds every open stream of a node's face and keeps
them bounded:

* at most ``http_api.max_streams`` streams are open at once; one more is refused with
  :class:`~quicmesh.errors.LimitExceeded` (429) before anything is allocated;
* each stream holds one node subscription (its queue
  ``stream_queue_size`` long) and a task, the *pump*, that moves each message, encoded once, into
  the stream's own queue (``http_api.stream_queue``, as long, refusing when full). The request's
  handler writes from that queue to the client;
* a consumer that falls behind is closed as a slow consumer and counted
  (``quicmesh_http_slow_consumers_closed_total``): when the stream's queue is full (or the node
  queue dropped a message) the pump aborts the connection at once, and a single write that
  stalls for ``http_api.write_timeout`` seconds does the same. The node never waits for a
  consumer, and one slow consumer costs the others nothing;
* a stream idle for ``http_api.heartbeat`` seconds sends a ping (an SSE comment line; WebSocket
  pings by aiohttp, which closes a peer whose pong does not come), so a vanished consumer is
  noticed and released.

Whatever ends a stream (the client leaving, the handler cancelled, the node stopping:
:meth:`StreamHub.close_all`), its ``finally`` closes the node subscription, cancels the pump,
closes the queue and frees its slot, in that order.

Each message is a JSON object ``{"topic", "sender", "seq", "payload_b64", "payload"}``
(``payload`` is the UTF-8 text of the payload, ``null`` when it is not valid UTF-8): an SSE
``event: message`` (with ``id: <seq>``) or a WebSocket text frame with ``"event": "message"``.
The first event of a stream is ``subscribed`` (``{"pattern"}``): from then on it receives.
Deliveries are filtered per topic when the caller's permissions deny part of the pattern.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from ..bounded import ContainerRegistry, Overflow
from ..bounded.aio import BoundedQueue, QueueClosed
from ..config.schema import HttpApiConfig
from ..core.permissions import Permissions
from ..errors import LimitExceeded
from ..observability.http import HttpFaceStats
from .handles import QueueHandle
from .http_host import HttpFaceHost
from .message import Message

__all__ = ["StreamHub", "encode_message"]

log = logging.getLogger("quicmesh.http_api")

_WS_MAX_IN = 4096
"""Largest frame a WebSocket subscriber may send (it has nothing to say but close and pong)."""


def encode_message(msg: Message) -> dict[str, object]:
    """The JSON object of a delivered message (see the module docstring)."""
    try:
        text: str | None = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"topic": msg.topic, "sender": str(msg.sender), "seq": msg.seq,
            "payload_b64": base64.b64encode(msg.payload).decode("ascii"), "payload": text}


def _sse(event: str, doc: dict[str, object], event_id: int | None = None) -> bytes:
    line = f"id: {event_id}\n" if event_id is not None else ""
    return f"{line}event: {event}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


def _ws(event: str, doc: dict[str, object]) -> str:
    return json.dumps({"event": event, **doc}, separators=(",", ":"))


class _Stream:
    """One open stream: its node subscription, queue and pump."""

    __slots__ = ("abort", "pattern", "pump", "queue", "sub")

    def __init__(self, sub: QueueHandle[Message], pattern: str, queue: BoundedQueue[bytes | str],
                 abort: Callable[[], None]) -> None:
        self.sub = sub
        self.pattern = pattern
        self.queue = queue
        self.abort = abort
        self.pump: asyncio.Task[None] | None = None


class StreamHub:
    """The open SSE and WebSocket streams of one node's HTTP face (see the module docstring)."""

    def __init__(self, node: HttpFaceHost, config: HttpApiConfig, stats: HttpFaceStats,
                 registry: ContainerRegistry | None = None) -> None:
        self._node = node
        self._cfg = config
        self._stats = stats
        self._registry = registry
        self._streams: set[_Stream] = set()  # bounded: at most max_streams (more are refused)
        self._closing = False

    @property
    def open_streams(self) -> int:
        """Streams open now."""
        return len(self._streams)

    async def serve(self, request: web.Request, pattern: str, flt: Permissions | None, *,
                    group: str | None = None) -> web.StreamResponse:
        """Serve one subscription to ``pattern`` until it ends; ``flt`` filters delivered topics;
        ``group``: as a member of that work-queue group (a message is taken when queued here)."""
        cap = self._cfg.max_streams
        if self._closing or len(self._streams) >= cap:
            raise LimitExceeded("http_api.max_streams", cap)
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        sub = await self._node.subscribe(pattern, queue_size=self._cfg.stream_queue_size, group=group)
        queue: BoundedQueue[bytes | str] = BoundedQueue(
            "http_api.stream_queue", self._cfg.stream_queue_size, Overflow.DROP_NEWEST, registry=self._registry
        )
        transport = request.transport

        def abort() -> None:
            if transport is not None:
                transport.abort()

        stream = _Stream(sub, pattern, queue, abort)
        self._streams.add(stream)
        self._stats.streams = len(self._streams)
        self._stats.streams_opened_total += 1
        try:
            if websocket:
                return await self._websocket(request, stream, pattern, flt)
            return await self._sse(request, stream, pattern, flt)
        finally:
            await sub.close()
            if stream.pump is not None:
                stream.pump.cancel()
                with contextlib.suppress(BaseException):
                    await stream.pump
            queue.close()
            self._streams.discard(stream)
            self._stats.streams = len(self._streams)

    def _start_pump(self, stream: _Stream, flt: Permissions | None, encode: Callable[[Message], bytes | str]) -> None:
        stream.pump = asyncio.ensure_future(self._pump(stream, flt, encode))

    async def _pump(self, stream: _Stream, flt: Permissions | None, encode: Callable[[Message], bytes | str]) -> None:
        """Node subscription -> the stream's queue; a full queue closes the slow consumer."""
        sub, queue = stream.sub, stream.queue
        try:
            async for msg in sub:
                if flt is not None and not flt.allows("subscribe", msg.topic):
                    continue  # a topic the caller may not see: skipped, the stream goes on
                if queue.closed:
                    return  # the stream is ending (client gone, node stopping)
                if not queue.put_nowait(encode(msg)) or sub.dropped:
                    self._slow(stream, "its queue overflowed")
                    return
        finally:
            queue.close_queue()  # the writer drains what is left and ends

    def _slow(self, stream: _Stream, why: str) -> None:
        self._stats.slow_consumers_closed_total += 1
        log.info("http api: closing a slow consumer of %r: %s", stream.pattern, why)
        stream.queue.close_queue()
        stream.abort()

    async def _write(self, stream: _Stream, write: Callable[[], Awaitable[None]]) -> bool:
        """One write within ``write_timeout``; False when the stream ended (slow or gone)."""
        try:
            async with asyncio.timeout(self._cfg.write_timeout):
                await write()
        except TimeoutError:
            self._slow(stream, f"a write stalled for {self._cfg.write_timeout:g}s")
            return False
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _next(self, stream: _Stream) -> bytes | str | None:
        """The next queued item; None after ``heartbeat`` seconds without one. Raises
        :class:`~quicmesh.bounded.QueueClosed` at the end."""
        try:
            async with asyncio.timeout(self._cfg.heartbeat):
                return await stream.queue.get()
        except TimeoutError:
            return None

    async def _sse(self, request: web.Request, stream: _Stream, pattern: str,
                   flt: Permissions | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self._stats.count_response(resp.status)

        def encode(msg: Message) -> bytes:
            return _sse("message", encode_message(msg), msg.seq)

        self._start_pump(stream, flt, encode)
        if not await self._write(stream, lambda: resp.write(_sse("subscribed", {"pattern": pattern}))):
            return resp
        while True:
            try:
                item = await self._next(stream)
            except QueueClosed:
                break
            data = b": ping\n\n" if item is None else item
            assert isinstance(data, bytes)
            if not await self._write(stream, functools.partial(resp.write, data)):
                return resp
            if item is not None:
                self._stats.messages_streamed_total += 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _websocket(self, request: web.Request, stream: _Stream, pattern: str,
                         flt: Permissions | None) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self._cfg.heartbeat, max_msg_size=_WS_MAX_IN)
        await ws.prepare(request)
        self._stats.count_response(ws.status)

        def encode(msg: Message) -> str:
            return _ws("message", encode_message(msg))

        async def read() -> None:  # close and pong frames; anything else is ignored
            async for frame in ws:
                if frame.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
            stream.queue.close_queue()

        reader = asyncio.ensure_future(read())
        try:
            self._start_pump(stream, flt, encode)
            ok = await self._write(stream, lambda: ws.send_str(_ws("subscribed", {"pattern": pattern})))
            while ok and not ws.closed:
                try:
                    item = await self._next(stream)
                except QueueClosed:
                    break
                if item is None:
                    continue  # aiohttp's heartbeat pings
                assert isinstance(item, str)
                ok = await self._write(stream, functools.partial(ws.send_str, item))
                if ok:
                    self._stats.messages_streamed_total += 1
            if ok and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await ws.close()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        return ws

    def close_all(self) -> None:
        """The node is stopping: refuse new streams and end every open one (each writer drains
        what is queued, then ends its response)."""
        self._closing = True
        for stream in list(self._streams):
            stream.queue.close_queue()
