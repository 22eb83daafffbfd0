"""The node's HTTP endpoint: /metrics, /health, /ready and /live on a small asyncio server.

Theory of operation
-------------------
No HTTP framework: :func:`asyncio.start_server` and just enough HTTP/1.1 for monitoring
clients. Each connection carries one request: the head (request line and headers) must arrive
within ``read_timeout`` seconds and fit in ``max_request_bytes`` (else 408 / 431), only ``GET``
is served (405 otherwise, unknown paths 404), and every response has a ``Content-Length`` and
``Connection: close``. At most ``max_connections`` connections are served at once; one more is
answered 503 and closed at once, so a flood of scrapers cannot grow the node's memory. The
server binds loopback only unless ``allow_remote=True`` (it has no authentication).

Routes:

* ``/metrics``: :class:`~.metrics.NodeMetrics` in the Prometheus text format;
* ``/health``: JSON (see :func:`health_document`), status ``ok`` or ``degraded``;
* ``/ready``: 200 or 503 with the node's reason;
* ``/live``: 200 while the event loop answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ObservabilityConfig
from ..errors import ConfigError
from .metrics import CONTENT_TYPE, ContainerAggregator, NodeMetrics
from .process import asyncio_tasks, open_fds, process_rss
from .sentinel import LeakSentinel, Verdict
from .view import NodeView, gauges_of

__all__ = ["HttpEndpoint", "health_document", "is_loopback"]

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_RESERVED = ("status", "node_id", "realm", "ready", "reasons", "gauges", "containers", "process", "sentinel")


def is_loopback(host: str) -> bool:
    """``True`` for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _realm_of(node: NodeView) -> Any:
    """``{"mode": "open"|"authority", "name", ...}`` when the node reports it, else its name."""
    realm_health = getattr(node, "realm_health", None)
    return realm_health() if callable(realm_health) else str(node.realm)


def health_document(
    node: NodeView,
    containers: ContainerAggregator,
    verdict: Verdict | None,
) -> dict[str, Any]:
    """The /health JSON document.

    ``{"status": "ok"|"degraded", "node_id", "realm": {"mode": "open"|"authority", "name", ...},
    "ready": {"ok", "reason"}, "reasons": [...],
    "gauges": {connections, peers: {view: n}, topics, ...}, <node.health() sections: address_book,
    streams, gossip, rpc, connections, store...>, "containers": {name: {"kind", "size",
    "capacity", "fill", "peak", "evictions", ...}}, "process": {"rss_bytes", "open_fds",
    "asyncio_tasks"}, "sentinel": {...}}``. ``status`` is ``degraded`` when the sentinel says so,
    and ``reasons`` then lists its reasons.
    """
    doc: dict[str, Any] = {}
    for section, values in node.health().items():
        if section not in _RESERVED:
            doc[section] = dict(values) if isinstance(values, Mapping) else values
    ok, why = node.ready()
    groups = containers.collect()
    names = [g.name for g in groups]
    container_doc: dict[str, Any] = {}
    for g in groups:
        key = g.name if names.count(g.name) == 1 else f"{g.name}[{g.kind}]"
        container_doc[key] = g.to_dict()
    degraded = verdict is not None and verdict.degraded
    head: dict[str, Any] = {
        "status": "degraded" if degraded else "ok",
        "node_id": str(node.node_id),
        "realm": _realm_of(node),
        "ready": {"ok": ok, "reason": why},
        "reasons": [r.to_dict() for r in verdict.reasons] if verdict is not None else [],
        "gauges": gauges_of(node).to_dict(),
    }
    tail: dict[str, Any] = {
        "containers": container_doc,
        "process": {"rss_bytes": process_rss(), "open_fds": open_fds(), "asyncio_tasks": asyncio_tasks()},
        "sentinel": verdict.to_dict() if verdict is not None else None,
    }
    return {**head, **doc, **tail}


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpEndpoint:
    """Serves a node's /metrics, /health, /ready and /live over HTTP/1.1 (GET only).

    ``sentinel`` (optional) feeds /health's status and the sentinel metrics. ``clock`` must be the
    clock the sentinel is sampled with (``time.monotonic`` for :class:`~.sentinel.SentinelTask`).
    Limits default to ``config``'s ``http_*`` settings; keyword arguments override them.
    """

    def __init__(
        self,
        node: NodeView,
        host: str = "127.0.0.1",
        port: int = 0,
        sentinel: LeakSentinel | None = None,
        *,
        allow_remote: bool | None = None,
        config: ObservabilityConfig | None = None,
        max_connections: int | None = None,
        max_request_bytes: int | None = None,
        read_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cfg = config or ObservabilityConfig()
        self._node = node
        self._host = host
        self._port = port
        self._sentinel = sentinel
        self._allow_remote = cfg.http_allow_remote if allow_remote is None else allow_remote
        self._max_connections = max_connections or cfg.http_max_connections
        self._max_request_bytes = max_request_bytes or cfg.http_max_request_bytes
        self._read_timeout = read_timeout or cfg.http_read_timeout
        self._clock = clock
        self._metrics = NodeMetrics(node, sentinel, clock=clock)
        self._server: asyncio.Server | None = None
        self._active = 0
        self._writers: set[asyncio.StreamWriter] = set()  # bounded: at most max_connections (more are refused)
        self._refusing = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.refused_total = 0
        """Connections answered 503 because ``max_connections`` were being served."""
        self.address: str | None = None
        """The bound ``HOST:PORT`` once started."""

    @property
    def metrics(self) -> NodeMetrics:
        """The node's metrics (its private prometheus registry)."""
        return self._metrics

    @property
    def active_connections(self) -> int:
        """HTTP connections being served now."""
        return self._active

    async def start(self) -> str:
        """Bind and serve; returns the bound ``HOST:PORT`` (IPv6 hosts in brackets).

        Raises :class:`~quicmesh.errors.ConfigError` for a non-loopback host without
        ``allow_remote``, and ``OSError`` when the address cannot be bound.
        """
        if self._server is not None:
            assert self.address is not None
            return self.address
        host = self._host.strip("[]")
        if not self._allow_remote and not is_loopback(host):
            raise ConfigError(
                "http",
                f"refusing to serve metrics and health on non-loopback address {self._host!r}; "
                "set observability.http_allow_remote (allow_remote=True) to allow it",
            )
        server = await asyncio.start_server(
            self._on_connection, host, self._port, limit=self._max_request_bytes, reuse_address=True
        )
        self._server = server
        sock = server.sockets[0].getsockname()
        bound_host, bound_port = str(sock[0]), int(sock[1])
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        return self.address

    async def stop(self) -> None:
        """Stop listening and close every open HTTP connection; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()  # the handler's pending read ends with EOF and it returns
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._idle.wait()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await server.wait_closed()

    # -- connection handling ------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._active >= self._max_connections:
                await self._refuse(reader, writer)
                return
            self._active += 1
            self._idle.clear()
            self._writers.add(writer)
            try:
                await self._serve_one(reader, writer)
            finally:
                self._writers.discard(writer)
                self._active -= 1
                if self._active == 0:
                    self._idle.set()
        except Exception:  # never let an error escape into asyncio's callback logging
            log.debug("quicmesh http: connection failed", exc_info=True)
            writer.transport.abort()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer 503 to a connection beyond ``max_connections``.

        Up to ``max_connections`` refusals are served politely at once (the head is read, with a
        short timeout, so the client sees the 503 rather than a reset); beyond that the
        connection is dropped at once, so a flood costs no memory.
        """
        self.refused_total += 1
        if self._refusing >= self._max_connections:
            writer.transport.abort()
            return
        self._refusing += 1
        try:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(self._read_timeout, 1.0)):
                    await reader.readuntil(b"\r\n\r\n")
            await self._respond(reader, writer, 503, b"too many connections\n", "text/plain; charset=utf-8")
        finally:
            self._refusing -= 1

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        text = "text/plain; charset=utf-8"
        try:
            try:
                async with asyncio.timeout(self._read_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                raise _HttpError(408, "request head not received in time") from None
            except asyncio.LimitOverrunError:
                raise _HttpError(431, "request head too large") from None
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            method, path = self._parse(head)
            status, body, ctype, extra = self._route(method, path)
            await self._respond(reader, writer, status, body, ctype, extra)
        except _HttpError as exc:
            await self._respond(reader, writer, exc.status, (exc.message + "\n").encode(), text)
        except Exception:
            log.exception("quicmesh http: error serving a request")
            await self._respond(reader, writer, 500, b"internal error\n", text)

    def _parse(self, head: bytes) -> tuple[str, str]:
        if len(head) > self._max_request_bytes:
            raise _HttpError(431, "request head too large")
        try:
            line = head.split(b"\r\n", 1)[0].decode("ascii")
        except UnicodeDecodeError:
            raise _HttpError(400, "request line is not ASCII") from None
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            raise _HttpError(400, "malformed request line")
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        return method, path

    def _route(self, method: str, path: str) -> tuple[int, bytes, str, dict[str, str]]:
        text = "text/plain; charset=utf-8"
        if path not in ("/metrics", "/health", "/ready", "/live"):
            return 404, b"not found\n", text, {}
        if method != "GET":
            return 405, b"only GET is allowed\n", text, {"Allow": "GET"}
        if path == "/metrics":
            return 200, self._metrics.render(), CONTENT_TYPE, {}
        if path == "/live":
            return 200, b"ok\n", text, {}
        if path == "/ready":
            ok, why = self._node.ready()
            body = _json({"ready": ok, "reason": why})
            return (200 if ok else 503), body, "application/json", {}
        verdict = self._sentinel.verdict(self._clock()) if self._sentinel is not None else None
        doc = health_document(self._node, self._metrics.collector.containers, verdict)
        return 200, _json(doc), "application/json", {}

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            "Cache-Control: no-store",
        ]
        for k, v in (extra or {}).items():
            headers.append(f"{k}: {v}")
        try:
            async with asyncio.timeout(self._read_timeout):
                writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body)
                await writer.drain()
                if status >= 400 and writer.can_write_eof():
                    # Lingering close: the client may still be sending (a body, an oversized
                    # head); closing with unread input would reset the connection and lose this
                    # response. Half-close, then discard input (bounded) until the client closes.
                    writer.write_eof()
                    async with asyncio.timeout(min(self._read_timeout, 1.0)):
                        discarded = 0
                        while discarded < 16 * self._max_request_bytes:
                            chunk = await reader.read(self._max_request_bytes)
                            if not chunk:
                                break
                            discarded += len(chunk)
        except (ConnectionError, TimeoutError, RuntimeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._read_timeout):
                    await writer.wait_closed()


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, default=str, separators=(",", ":")) + "\n").encode()
