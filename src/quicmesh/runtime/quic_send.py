"""The send path of a :class:`~.quic_connection.QuicConnection` (a mixin): frames are queued and
written to the QUIC stream once per loop iteration (or at once, :meth:`SendPath.flush_now`; and
the iteration's first ``transport.flush_bytes`` as soon as they are queued, so the peer starts on
them while the rest is made); the queue plus what qh3 has not sent yet is capped at
``transport.send_buffer_bytes`` (a frame beyond it is dropped and counted); :meth:`SendPath.drain`
waits for low water. Frames queued inside the transport's :class:`WriteThrough` scope schedule
no flush and are written when the scope ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

from ..config import TransportConfig
from ..core.messages import Request
from ..core.wire import Message
from ..errors import TransportError
from ..identity import NodeId
from . import _quic_adapter as qa
from .busy_poll import BusyPoll
from .transport import TransportStats

__all__ = ["SendPath", "WriteThrough"]


class WriteThrough:
    """#14: a transport's write-through scope. Frames a connection queues between :meth:`begin`
    and the outermost :meth:`end` are written to QUIC at that ``end`` and schedule no
    end-of-iteration flush: for a caller that knows its sends are the iteration's last (a lone
    call, a handler's reply, the batches flushed at the end of an iteration). A flush scheduled
    and then cancelled (what ``flush_now`` did) still cost the event loop one more pass, an
    ``epoll_wait`` and its bookkeeping, on every round trip."""

    __slots__ = ("busy", "depth", "held")

    def __init__(self) -> None:
        self.depth = 0
        self.held: list[SendPath] = []  # bounded: connections written to inside one scope
        self.busy: BusyPoll | None = None
        """#14: the transport's busy poller (``busy_poll_us``), kicked after every transmit of
        its connections (:meth:`SendPath.transmitted`); ``None``: off."""

    def begin(self) -> None:
        self.depth += 1

    def end(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.held:
            held, self.held = self.held, []
            for conn in held:
                conn._in_scope = False
                conn.flush_now()

    def __enter__(self) -> None:
        self.begin()

    def __exit__(self, *_exc: object) -> None:
        self.end()


_NO_SCOPE = contextlib.nullcontext()
_EAGER_HANDLERS = sys.version_info >= (3, 12)
"""Handlers start in the step that hands their request on (``runtime.handlers``)."""


class SendPath:
    """Queueing and writing of a connection's frames (mixed into ``QuicConnection``, whose
    ``__init__`` sets the attributes declared here)."""

    _cfg: TransportConfig
    _loop: asyncio.AbstractEventLoop
    _proto: qa.Proto
    _stats: TransportStats
    _touch: Callable[[NodeId], object]
    _sid: int | None
    _open: bool
    _closed: bool
    _drained: asyncio.Future[None] | None
    _queue: list[bytes]
    _queued: int
    _backlog: int
    _flush_handle: asyncio.Handle | None
    _through: WriteThrough
    _in_scope: bool = False
    """Queued inside a write-through scope, to be written at its end (see :class:`WriteThrough`)."""
    _wrote_early: bool = False
    """Whether this iteration's first ``flush_bytes`` were written early (see :meth:`_write_early`)."""
    _writing_early: bool = False
    """Set while :meth:`_write_early` writes from inside ``send()``: the connection's ``abort``
    then closes it at the next iteration instead of under the sender's feet."""
    role: str
    peer_id: NodeId
    _written_total: int = 0

    @property
    def sent_progress(self) -> int:
        """Bytes of this connection's stream that QUIC has put on the wire at least once (grows
        while the peer takes data, however slowly; stands still while it takes none)."""
        return self._written_total - self._quic_backlog()

    @property
    def pending_bytes(self) -> int:
        """Bytes queued or not yet sent by QUIC (defined by the connection)."""
        raise NotImplementedError

    @property
    def pending_bound(self) -> int:
        """#14: bytes queued plus QUIC's backlog as read after the last write to it: at least
        :attr:`pending_bytes` (the backlog grows only by those writes and shrinks as QUIC sends),
        without asking qh3 (its send buffer size cost ~12 % of a fanning-out gateway's CPU)."""
        return 0 if self._closed else self._queued + self._backlog

    def abort(self, code: str, error: Exception | None, *, send: bool, reason: str = "") -> None:
        """Close at once (defined by the connection)."""
        raise NotImplementedError

    async def drain(self, until: int | None = None) -> None:
        low = self._cfg.send_buffer_bytes // 4 if until is None else until
        while not self._closed and self.pending_bytes > low:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)

    def transmitted(self) -> None:
        """Called by the adapter after each transmit: wake drain() waiters below low water, and
        keep the loop awake for the answer when busy polling is on."""
        busy = self._through.busy
        if busy is not None:
            busy.kick()
        waiter = self._drained
        if waiter is not None and (self._closed or self.pending_bytes <= self._cfg.send_buffer_bytes // 4):
            self._drained = None
            if not waiter.done():
                waiter.set_result(None)

    def _quic_backlog(self) -> int:
        if self._sid is None or self._proto.terminated:
            return 0
        try:
            return int(self._proto.quic.get_send_buffer_size(self._sid))
        except Exception:
            return 0

    def _enqueue(self, frame: bytes) -> bool:
        n = len(frame)
        cap = self._cfg.send_buffer_bytes
        if self._queued + self._backlog + n > cap:
            self._backlog = self._quic_backlog()
            if self._queued + self._backlog + n > cap:
                self._stats.dropped_frames_total += 1
                return False
        self._queue.append(frame)
        self._queued += n
        if not self._in_scope:
            through = self._through
            if through.depth:
                self._in_scope = True
                through.held.append(self)
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)
        if self._queued >= self._cfg.flush_bytes > 0 and not self._wrote_early and self._open:
            self._write_early()
        return True

    def _write_early(self) -> None:
        """#14: the iteration's first ``flush_bytes`` are queued: write them now, so the peer
        works on them while this node produces the rest (64 calls made in one iteration reach
        the provider in two writes, not one at the end). Once per iteration: the rest still
        leaves together at its end, in as few datagrams as before. Runs inside ``send()``, so a
        failing write must not close the connection (and tell the node) there: see
        ``_writing_early``."""
        self._wrote_early = True  # until the end-of-iteration flush, still scheduled
        self._writing_early = True
        try:
            self._write_queue()
        finally:
            self._writing_early = False

    def flush_now(self) -> None:
        """#14: write what is queued now, not at the next loop iteration (nothing else is coming)."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
        self._flush()  # also what a write-through scope queued, for which nothing was scheduled

    def _reply_scope(self, messages: list[Message]) -> AbstractContextManager[None]:
        """#14: the scope to hand on a received chunk in. With requests in it on Python 3.12+,
        whose handlers start (and mostly answer) as they are handed on, the write-through scope:
        their replies leave together when the chunk is done, in this step, not one write each
        and not at the end of the iteration (a loop pass more per call)."""
        if _EAGER_HANDLERS and any(type(m) is Request for m in messages):
            return self._through
        return _NO_SCOPE

    def _flush(self) -> None:
        self._flush_handle = None
        self._wrote_early = False
        self._write_queue()

    def _write_queue(self) -> None:
        if not self._open or not self._queue:
            return
        data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
        self._queue.clear()
        self._queued = 0
        self._write_now(data)
        if self.role == "node" and not self._closed:
            self._touch(self.peer_id)  # mark used for the LRU pool
        self._backlog = self._quic_backlog()

    def _write_now(self, data: bytes) -> None:
        assert self._sid is not None
        try:
            self._proto.quic.send_stream_data(self._sid, data)
            self._written_total += len(data)
            self._backlog += len(data)  # pending_bound stays an upper bound until the exact read
        except Exception as exc:
            self.abort("error", TransportError(f"stream write failed: {exc}"), send=False)
            return
        self._proto.transmit()

    def _send_raw(self, data: bytes) -> None:
        """Write raw bytes on the stream, bypassing the codec (tests: garbage input)."""
        self._write_now(data)
