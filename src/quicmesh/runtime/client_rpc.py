"""The light client's procedures: calls through the gateway, and handlers the gateway invokes
(:class:`ClientRpc`, a part of :class:`~quicmesh.runtime.client.Client`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..bounded import LruMap
from ..core.gateway_messages import GAdvertise, GCall, GInvoke, GInvokeError, GInvokeResult, GUnadvertise
from ..core.wire import Message as WireMessage
from ..errors import CallTimeout, RemoteError
from .transport import Connection

__all__ = ["MAX_INVOCATIONS", "ClientRpc", "Handler"]

MAX_INVOCATIONS = 1_000
"""Invocations running at once (the gateway's default ``max_client_pending_calls``); beyond it
the client answers ``overloaded`` (retryable)."""

Handler = Callable[[bytes], Awaitable[bytes]]
"""A procedure: ``async def handler(payload: bytes) -> bytes``."""


class ClientRpc:
    """``call``, ``advertise`` and ``unadvertise`` of a light client, and running the handlers."""

    call_timeout: float
    _conn: Connection | None
    _handlers: dict[str, Handler]
    _invocations: LruMap[asyncio.Task[None], None]

    def _check_open(self) -> None:
        raise NotImplementedError

    def _next_id(self) -> int:
        raise NotImplementedError

    async def _request(self, message: WireMessage, req: int, timeout: float) -> Any:
        raise NotImplementedError

    def _invoke(self, conn: Connection, m: GInvoke) -> None:
        """The gateway forwarded a call to one of our handlers: run it as a task."""
        if len(self._invocations) >= MAX_INVOCATIONS:
            conn.send(GInvokeError(m.id, "overloaded", "too many invocations running", True))
            return
        task = asyncio.ensure_future(self._run_handler(conn, m))
        self._invocations.set(task, None)
        task.add_done_callback(self._invocations.pop)

    async def call(self, name: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """Call procedure ``name`` somewhere in the mesh and return its reply.

        Raises ``NoProvider``, ``CallTimeout``, ``RemoteError``, ``Overloaded``, ``LimitExceeded``
        (``max_client_pending_calls`` or ``max_client_pending_bytes``) or ``ConnectionLost``;
        ``timeout`` is clamped to the gateway's ``max_client_call_timeout``.
        """
        self._check_open()
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        total = self.call_timeout if timeout is None else timeout
        req = self._next_id()
        msg = GCall(req, name, bytes(payload), min(max(1, int(total * 1000)), (1 << 63) - 1))
        try:
            result: bytes = await self._request(msg, req, total + 1.0)  # the gateway answers a timeout itself
        except TimeoutError:
            raise CallTimeout(f"{name}: no reply within {total:.3f}s") from None
        return result

    async def advertise(self, name: str, handler: Handler) -> None:
        """Offer procedure ``name`` to the mesh (the gateway advertises it on this client's behalf).

        Raises :class:`~quicmesh.errors.LimitExceeded` past the gateway's
        ``max_client_advertisements``.
        """
        self._check_open()
        if not callable(handler):
            raise TypeError("handler must be an async callable")
        had = self._handlers.get(name)
        self._handlers[name] = handler
        try:
            await self._request(GAdvertise(req := self._next_id(), name), req, self.call_timeout)
        except BaseException:
            if had is None:
                self._handlers.pop(name, None)
            else:
                self._handlers[name] = had
            raise

    async def unadvertise(self, name: str) -> None:
        """Withdraw procedure ``name``."""
        if self._handlers.pop(name, None) is None:
            return
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.send(GUnadvertise(name))

    async def _run_handler(self, conn: Connection, m: GInvoke) -> None:
        handler = self._handlers.get(m.name)
        reply: WireMessage
        if handler is None:
            reply = GInvokeError(m.id, "no_handler", m.name, retryable=True)
        else:
            try:
                async with asyncio.timeout(m.timeout_ms / 1000.0):
                    out = await handler(m.payload)
                if isinstance(out, bytes | bytearray | memoryview):
                    reply = GInvokeResult(m.id, bytes(out))
                else:
                    reply = GInvokeError(m.id, "bad_result", f"handler returned {type(out).__name__}, not bytes")
            except RemoteError as exc:
                reply = GInvokeError(m.id, exc.code[:256], exc.message[:1000], exc.retryable)
            except TimeoutError:
                reply = GInvokeError(m.id, "timeout", f"handler exceeded {m.timeout_ms} ms")
            except Exception as exc:
                reply = GInvokeError(m.id, "handler_error", f"{type(exc).__name__}: {exc}"[:1000])
        if not conn.closed:
            conn.send(reply)
