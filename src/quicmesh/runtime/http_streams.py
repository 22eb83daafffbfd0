"""Subscriptions of the HTTP face: Server-Sent Events and WebSocket streams, each bounded.

Theory of operation
-------------------
``GET /v1/subscribe/{pattern}`` opens one stream: a WebSocket when the request asks to upgrade,
else Server-Sent Events. :class:`StreamHub` holds every open stream of a node's face and keeps
them bounded:

* at most ``http_api.max_streams`` streams are open at once; one more is refused with
  :class:`~quicmesh.errors.LimitExceeded` (429) before anything is allocated (the slot is taken
  before the node subscription is opened, so requests racing for the last slot cannot pass it);
* the streams to one pattern share **one** node subscription (a :class:`_Fan`, its queue
  ``stream_queue_size`` long) and one task that reads it, encodes each message once per
  encoding (an SSE event; a complete WebSocket frame, or with ``http_api.websocket_compress``
  the frame's payload, which aiohttp compresses per stream) and puts it into every member stream's own queue
  (``http_api.stream_queue``, as long, refusing when full), filtered per stream by its caller's
  permissions. A stream that joins an open fan gets the messages read after it joined; the last
  stream to leave closes the node subscription. A work-queue group member keeps a node
  subscription and a task (its *pump*) of its own, since each member must get its own share of
  the group's messages. The request's handler writes from the stream's queue to the client,
  whatever waits there (up to 64 messages) in one write (a WebSocket's frames go to its
  connection's transport joined, then wait as aiohttp's writer waits while the transport's
  buffer is past its high-water mark; compressed ones go one by one through aiohttp's writer);
* a consumer that falls behind is closed as a slow consumer and counted
  (``quicmesh_http_slow_consumers_closed_total``): when the stream's queue is full (or the node
  queue dropped a message, which every stream sharing it missed) the stream's connection is
  aborted at once, and a single write that stalls for ``http_api.write_timeout`` seconds does the
  same. The node never waits for a consumer, and one slow consumer costs the others nothing;
* a stream idle for ``http_api.heartbeat`` seconds sends a ping (an SSE comment line; WebSocket
  pings by aiohttp, which closes a peer whose pong does not come), so a vanished consumer is
  noticed and released.

Whatever ends a stream (the client leaving, the handler cancelled, the node stopping:
:meth:`StreamHub.close_all`), its ``finally`` leaves its fan (or closes its own node subscription
and cancels its pump), closes the queue and frees its slot, in that order. A fan whose node
subscription ends (the node stopping) closes its members' queues: each writer drains what is
queued, then ends its response.

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
import struct
from collections.abc import Awaitable, Callable
from typing import cast

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


_WS_HEAD16 = struct.Struct("!BBH").pack
_WS_HEAD64 = struct.Struct("!BBQ").pack


def ws_text_frame(data: bytes) -> bytes:
    """UTF-8 text ``data`` as one complete, unmasked WebSocket text frame (RFC 6455 section 5.2:
    FIN, opcode 1, the payload length in 7, 16 or 64 bits), as a server sends it; the frames of
    many messages joined are one write."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65_536:
        return _WS_HEAD16(0x81, 126, n) + data
    return _WS_HEAD64(0x81, 127, n) + data


def _sse_message(msg: Message) -> bytes:
    return _sse("message", encode_message(msg), msg.seq)


def _ws_payload(msg: Message) -> bytes:
    return _ws("message", encode_message(msg)).encode()


def _ws_message(msg: Message) -> bytes:
    return ws_text_frame(_ws_payload(msg))


Encode = Callable[[Message], bytes | str]

_WRITE_BATCH = 64
"""Most queued messages one write to a stream carries (what waits is written together: one
write, one timeout, one flush of the socket instead of one each)."""


async def _write_frames(request: web.Request, ws: web.WebSocketResponse, frames: list[bytes | str]) -> None:
    """Complete frames (:func:`ws_text_frame`) in one write to the connection, then, while its
    transport's buffer is past its high-water mark, aiohttp's own wait for it to drain (as its
    writer does after a frame): so a consumer that stops reading stalls this write, which
    ``write_timeout`` ends, and the buffer never grows past one batch beyond the mark."""
    transport = request.transport
    if ws.closed or transport is None or transport.is_closing():
        raise ConnectionResetError("the WebSocket is closing")
    transport.write(b"".join(cast("list[bytes]", frames)))
    protocol = request.protocol
    if protocol.writing_paused:
        await protocol._drain_helper()


async def _send_frames(ws: web.WebSocketResponse, payloads: list[bytes | str]) -> None:
    """With ``websocket_compress``: each payload through aiohttp's writer, which compresses it
    when the client took the extension (it waits only when its buffer is past its limit)."""
    for payload in payloads:
        await ws.send_frame(cast("bytes", payload), WSMsgType.TEXT)


class _Stream:
    """One open stream: its queue, and its fan or (a group member) its own node subscription and pump."""

    __slots__ = ("abort", "encode", "fan", "flt", "pattern", "pump", "queue", "sub")

    def __init__(self, pattern: str, queue: BoundedQueue[bytes | str], abort: Callable[[], None],
                 flt: Permissions | None, encode: Encode) -> None:
        self.pattern = pattern
        self.queue = queue
        self.abort = abort
        self.flt = flt
        self.encode = encode
        self.fan: _Fan | None = None
        self.sub: QueueHandle[Message] | None = None
        self.pump: asyncio.Task[None] | None = None


class _Fan:
    """One node subscription to ``pattern`` shared by the streams to it (see the module docstring)."""

    __slots__ = ("_dropped", "_hub", "members", "opened", "pattern", "sub", "task")

    def __init__(self, hub: StreamHub, pattern: str) -> None:
        self._hub = hub
        self.pattern = pattern
        self.members: dict[_Stream, None] = {}  # bounded: open streams (http_api.max_streams)
        self.sub: QueueHandle[Message] | None = None
        """The node subscription once open."""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the node subscription is open, or with the error that refused it."""
        self._dropped = 0
        self.task: asyncio.Task[None] | None = asyncio.ensure_future(self._run())
        """Until it ends (a finished task keeps its cancellation, whose traceback reaches the
        members through this fan's frames: let go of, as the gateway's fans do)."""
        self.task.add_done_callback(self._ended)

    def _ended(self, _task: asyncio.Task[None]) -> None:
        self.task = None

    async def join(self, stream: _Stream) -> None:
        """Add ``stream``; returns once the node subscription is open (raises what refused it)."""
        stream.fan = self
        self.members[stream] = None
        if self.sub is None:
            await asyncio.shield(self.opened)

    def leave(self, stream: _Stream) -> None:
        """``stream`` ended; the last one ends the fan (and closes its node subscription)."""
        stream.fan = None
        self.members.pop(stream, None)
        if not self.members:
            self._hub._fan_gone(self)
            if self.task is not None:
                self.task.cancel()

    async def _run(self) -> None:
        hub = self._hub
        try:
            sub = await hub._node.subscribe(self.pattern, queue_size=hub._cfg.stream_queue_size)
        except Exception as exc:
            hub._fan_gone(self)
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved here: a member that went meanwhile never awaits it
            return
        except BaseException:
            hub._fan_gone(self)
            self.opened.cancel()
            raise
        self.sub = sub
        self.opened.set_result(None)
        try:
            async for first in sub:
                batch = [first]
                while sub.pending:  # what waits is taken without a wait (at most the queue's size)
                    batch.append(await sub.__anext__())
                self._deliver(batch, sub.dropped)
        finally:
            hub._fan_gone(self)
            self.sub = None
            for stream in self.members:
                stream.queue.close_queue()  # the node subscription ended: each writer drains and ends
            await sub.close()

    def _deliver(self, batch: list[Message], dropped: int) -> None:
        """Each message of ``batch`` to each member's queue, encoded once per encoding."""
        hub = self._hub
        lost, self._dropped = dropped != self._dropped, dropped
        encoded: dict[Encode, list[bytes | str]] = {}  # bounded: two encodings (SSE, WebSocket)
        for stream in list(self.members):
            queue = stream.queue
            if queue.closed:
                continue  # ending (client gone, closed as slow): it leaves when its handler does
            if lost:
                hub._slow(stream, "messages were dropped before it could queue them")
                continue
            items = encoded.get(stream.encode)
            if items is None:
                items = encoded[stream.encode] = [stream.encode(msg) for msg in batch]
            flt = stream.flt
            for msg, item in zip(batch, items, strict=True):
                if flt is not None and not flt.allows("subscribe", msg.topic):
                    continue  # a topic the caller may not see: skipped, the stream goes on
                if not queue.put_nowait(item):
                    hub._slow(stream, "its queue overflowed")
                    break


class StreamHub:
    """The open SSE and WebSocket streams of one node's HTTP face (see the module docstring)."""

    def __init__(self, node: HttpFaceHost, config: HttpApiConfig, stats: HttpFaceStats,
                 registry: ContainerRegistry | None = None) -> None:
        self._node = node
        self._cfg = config
        self._stats = stats
        self._registry = registry
        self._streams: set[_Stream] = set()  # bounded: at most max_streams (more are refused)
        self._fans: dict[str, _Fan] = {}  # bounded: one per pattern of an open stream (max_streams)
        self._closing = False
        stats.stream_subscriptions = lambda: self.node_subscriptions

    @property
    def open_streams(self) -> int:
        """Streams open now."""
        return len(self._streams)

    @property
    def node_subscriptions(self) -> int:
        """Node subscriptions the streams hold now: one per pattern they share, one per group member."""
        return len(self._fans) + sum(1 for s in self._streams if s.sub is not None)

    def _fan_gone(self, fan: _Fan) -> None:
        if self._fans.get(fan.pattern) is fan:
            del self._fans[fan.pattern]

    async def serve(self, request: web.Request, pattern: str, flt: Permissions | None, *,
                    group: str | None = None) -> web.StreamResponse:
        """Serve one subscription to ``pattern`` until it ends; ``flt`` filters delivered topics;
        ``group``: as a member of that work-queue group (a message is taken when queued here)."""
        cap = self._cfg.max_streams
        if self._closing or len(self._streams) >= cap:
            raise LimitExceeded("http_api.max_streams", cap)
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        queue: BoundedQueue[bytes | str] = BoundedQueue(
            "http_api.stream_queue", self._cfg.stream_queue_size, Overflow.DROP_NEWEST, registry=self._registry
        )
        transport = request.transport

        def abort() -> None:
            if transport is not None:
                transport.abort()

        encode = (_ws_payload if self._cfg.websocket_compress else _ws_message) if websocket else _sse_message
        stream = _Stream(pattern, queue, abort, flt, encode)
        self._streams.add(stream)  # the slot is taken before the first wait
        try:
            if group is None:
                fan = self._fans.get(pattern)
                if fan is None:
                    fan = self._fans[pattern] = _Fan(self, pattern)
                await fan.join(stream)
            else:
                stream.sub = await self._node.subscribe(pattern, queue_size=self._cfg.stream_queue_size, group=group)
            self._stats.streams = len(self._streams)
            self._stats.streams_opened_total += 1
            if websocket:
                return await self._websocket(request, stream, pattern)
            return await self._sse(request, stream, pattern)
        finally:
            if stream.fan is not None:
                stream.fan.leave(stream)
            if stream.sub is not None:
                await stream.sub.close()
            if stream.pump is not None:
                stream.pump.cancel()
                with contextlib.suppress(BaseException):
                    await stream.pump
            queue.close()
            self._streams.discard(stream)
            self._stats.streams = len(self._streams)

    def _start_pump(self, stream: _Stream) -> None:
        """A group member's own pump (a fan's members are fed from the moment they joined)."""
        if stream.sub is not None:
            stream.pump = asyncio.ensure_future(self._pump(stream, stream.sub))

    async def _pump(self, stream: _Stream, sub: QueueHandle[Message]) -> None:
        """A group member's node subscription -> the stream's queue; a full queue closes the slow consumer."""
        queue, flt, encode = stream.queue, stream.flt, stream.encode
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

    async def _next(self, stream: _Stream) -> list[bytes | str] | None:
        """What is queued (at least one item, at most :data:`_WRITE_BATCH`), so one write carries
        them all; None after ``heartbeat`` seconds without one. Raises
        :class:`~quicmesh.bounded.QueueClosed` at the end."""
        queue = stream.queue
        items: list[bytes | str] = []
        if not len(queue):
            try:
                async with asyncio.timeout(self._cfg.heartbeat):
                    items.append(await queue.get())
            except TimeoutError:
                return None
        while len(queue) and len(items) < _WRITE_BATCH:
            items.append(queue.get_nowait())
        if not items:
            queue.get_nowait()  # closed and drained: raises QueueClosed
        return items

    async def _sse(self, request: web.Request, stream: _Stream, pattern: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self._stats.count_response(resp.status)
        self._start_pump(stream)
        if not await self._write(stream, lambda: resp.write(_sse("subscribed", {"pattern": pattern}))):
            return resp
        while True:
            try:
                items = await self._next(stream)
            except QueueClosed:
                break
            data = b": ping\n\n" if items is None else b"".join(cast("list[bytes]", items))
            if not await self._write(stream, functools.partial(resp.write, data)):
                return resp
            if items is not None:
                self._stats.messages_streamed_total += len(items)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _websocket(self, request: web.Request, stream: _Stream, pattern: str) -> web.StreamResponse:
        compress = self._cfg.websocket_compress
        ws = web.WebSocketResponse(heartbeat=self._cfg.heartbeat, max_msg_size=_WS_MAX_IN, compress=compress)
        write = functools.partial(_send_frames, ws) if compress else functools.partial(_write_frames, request, ws)
        await ws.prepare(request)
        self._stats.count_response(ws.status)

        async def read() -> None:  # close and pong frames; anything else is ignored
            async for frame in ws:
                if frame.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
            stream.queue.close_queue()

        reader = asyncio.ensure_future(read())
        try:
            self._start_pump(stream)
            ok = await self._write(stream, lambda: ws.send_str(_ws("subscribed", {"pattern": pattern})))
            while ok and not ws.closed:
                try:
                    items = await self._next(stream)
                except QueueClosed:
                    break
                if items is None:
                    continue  # aiohttp's heartbeat pings
                ok = await self._write(stream, functools.partial(write, items))
                if ok:
                    self._stats.messages_streamed_total += len(items)
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
