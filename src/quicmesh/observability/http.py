"""The node's HTTP server on aiohttp: /metrics, /health, /ready and /live, behind a connection gate.

Theory of operation
-------------------
:class:`HttpServer` serves an :class:`aiohttp.web.Application` on one TCP address: aiohttp parses
HTTP/1.1 (and WebSocket), routes and writes responses. In front of aiohttp's protocol every
accepted connection first meets a gate (``_Gate``, an asyncio protocol that owns the socket and
hands the bytes on to aiohttp's per-connection protocol), which keeps the bounds of the node:

* at most ``max_connections`` connections are served at once; one more is answered ``503`` and
  closed. Up to ``max_connections`` refusals are answered politely at once (their head is read
  for at most a second, so the client sees the 503 rather than a reset); beyond that a connection
  is dropped at once, so a flood of clients cannot grow the node's memory;
* the first request head must arrive within ``read_timeout`` seconds (else ``408``) and fit in
  ``max_request_bytes`` (else ``431``): the gate counts the bytes up to the blank line ending the
  head and hands a head to aiohttp only when it is within bounds. Later requests of a kept-alive
  connection meet aiohttp's own limits, set from the same numbers: request lines and header
  fields of at most ``max_request_bytes`` (``400`` beyond), an idle connection closed after
  ``read_timeout`` (``keepalive_timeout``), bodies of at most ``client_max_size`` (``413``);
* the gate's own answers carry ``Content-Length`` and ``Connection: close`` and close lingering:
  the write side is shut first and input discarded (for at most a second), so a client still
  sending reads the answer rather than a reset.

A server binds loopback only unless ``allow_remote`` (the monitoring routes have no
authentication). Routes are added to :attr:`HttpServer.app` by their owner before
:meth:`HttpServer.start` (the HTTP face, :mod:`quicmesh.runtime.http_api`, mounts ``/v1`` on the
node's endpoint when both share an address). Errors outside ``/v1`` are answered in plain text,
and every response outside ``/v1`` closes its connection (scrapers make one request each).

:class:`HttpEndpoint` is the server with the monitoring routes (``GET`` only; ``405`` with
``Allow: GET`` otherwise, ``404`` for unknown paths):

* ``/metrics``: :class:`~.metrics.NodeMetrics` in the Prometheus text format (plus the HTTP
  face's numbers, :class:`HttpFaceStats`, once a face registered them);
* ``/health``: JSON (see :func:`health_document`), status ``ok`` or ``degraded``;
* ``/ready``: 200 or 503 with the node's reason;
* ``/live``: 200 while the event loop answers;
* ``/ui`` (and ``/ui/state``, ``/ui/events``): the web console, :mod:`.ui_console`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import ObservabilityConfig
from ..errors import ConfigError
from .metrics import CONTENT_TYPE, ContainerAggregator, MetricSpec, NodeMetrics
from .process import asyncio_tasks, open_fds, process_rss
from .sentinel import LeakSentinel, Verdict
from .ui_console import Console
from .view import NodeView, gauges_of

__all__ = ["HTTP_FACE_METRICS", "HttpEndpoint", "HttpFaceStats", "HttpServer", "health_document", "is_loopback"]

log = logging.getLogger(__name__)

_REASONS = {
    400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable",
}
_RESERVED = ("status", "node_id", "realm", "ready", "reasons", "gauges", "containers", "process", "sentinel")
_TEXT = "text/plain; charset=utf-8"
_LINGER = 1.0
"""Most seconds a refused or answered connection is read (and discarded) before it is closed."""
_REFUSED = "too many connections"
_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} /[\x21-\x7e]* HTTP/1\.[01]\r\n")
"""What the gate lets through to aiohttp as a request line (else 400)."""


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


# -- the connection gate ------------------------------------------------------------------------------


class _Gate(asyncio.Protocol):
    """One accepted connection: admitted (its bytes go on to aiohttp's protocol) or refused."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._refusing = False
        self._head_pending = True
        self._head = bytearray()  # bounded: at most max_request_bytes + one read (then answered)
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        s = self._server
        loop = asyncio.get_running_loop()
        if s.active_connections >= s.max_connections or s.protocol_factory is None:
            s.refused_total += 1
            if s._refusing >= s.max_connections or s.protocol_factory is None:
                transport.abort()
                return
            s._refusing += 1
            self._refusing = True
            self._timer = loop.call_later(min(s.read_timeout, _LINGER), self._answer, 503, _REFUSED)
            return
        s._admit(self)
        self._inner = s.protocol_factory()
        self._inner.connection_made(transport)
        self._timer = loop.call_later(s.read_timeout, self._answer, 408, "request head not received in time")

    def data_received(self, data: bytes) -> None:
        if self._answered or self._transport is None:
            return  # lingering: input is discarded
        if not self._head_pending:
            if self._inner is not None:
                self._inner.data_received(data)
            return
        self._head += data
        limit = self._server.max_request_bytes
        end = self._head.find(b"\r\n\r\n", 0, limit + 4)
        if end < 0 or end + 4 > limit:
            if len(self._head) > limit:
                self._answer(503 if self._refusing else 431, _REFUSED if self._refusing else "request head too large")
            return
        self._head_pending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head, self._head = bytes(self._head), bytearray()
        if self._refusing:
            self._answer(503, _REFUSED)
        elif not _REQUEST_LINE.match(head):
            self._answer(400, "malformed request line")
        elif self._inner is not None:
            self._inner.data_received(head)

    def eof_received(self) -> bool | None:
        if self._answered or self._inner is None:
            if self._transport is not None:
                self._transport.close()
            return None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refusing:
            self._refusing = False
            self._server._refusing -= 1
        inner, self._inner = self._inner, None
        if inner is not None:
            self._server._release(self)
            inner.connection_lost(exc)
        self._transport = None

    def _answer(self, status: int, message: str) -> None:
        """Write a plain-text answer, shut the write side and discard input (lingering close)."""
        transport = self._transport
        if self._answered or transport is None or transport.is_closing():
            return
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        body = (message + "\n").encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {_TEXT}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n")
        transport.write(head.encode("ascii") + body)
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(_LINGER, transport.close)
        else:
            transport.close()

    def close(self) -> None:
        """Close the connection (the server is stopping)."""
        if self._transport is not None:
            self._transport.close()


# -- the server ---------------------------------------------------------------------------------------


class HttpServer:
    """An aiohttp application served on one address within the gate's bounds (see the module
    docstring). Add routes and middlewares to :attr:`app` before :meth:`start`.

    ``allow_remote`` lifts the loopback-only rule; ``max_body_bytes`` is aiohttp's
    ``client_max_size`` (requests reading a larger body get 413).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        allow_remote: bool,
        max_connections: int,
        max_request_bytes: int,
        read_timeout: float,
        max_body_bytes: int = 64 * 1024,
        what: str = "the HTTP server",
    ) -> None:
        self._host = host
        self._port = port
        self._allow_remote = allow_remote
        self._what = what
        self.max_connections = max_connections
        """Connections served at once; more are answered 503."""
        self.max_request_bytes = max_request_bytes
        """Largest request head (bytes); 431 beyond (400 on a kept-alive connection's later requests)."""
        self.read_timeout = read_timeout
        """Seconds to send a request head (408 after), and a kept-alive connection's idle time."""
        self.app = web.Application(middlewares=[self._outer], client_max_size=max(1, max_body_bytes))
        """The application: add routes (and inner middlewares) before :meth:`start`."""
        self.api_prefix: str | None = None
        """Path prefix whose errors the routes' owner renders itself (``/v1/`` once the HTTP face
        is mounted); every other path gets plain-text errors and ``Connection: close``."""
        self.protocol_factory: Callable[[], asyncio.Protocol] | None = None
        """aiohttp's per-connection protocol factory, once started (the gate's inner protocol)."""
        self.refused_total = 0
        """Connections answered 503 (or dropped) because ``max_connections`` were being served."""
        self.address: str | None = None
        """The bound ``HOST:PORT`` once started (IPv6 hosts in brackets)."""
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._gates: set[_Gate] = set()  # bounded: at most max_connections (more are refused)
        self._refusing = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_connections(self) -> int:
        """HTTP connections being served now."""
        return len(self._gates)

    def _admit(self, gate: _Gate) -> None:
        self._gates.add(gate)
        self._idle.clear()

    def _release(self, gate: _Gate) -> None:
        self._gates.discard(gate)
        if not self._gates:
            self._idle.set()

    @web.middleware
    async def _outer(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Plain-text errors and ``Connection: close`` outside :attr:`api_prefix` (the API renders its own)."""
        api = self.api_prefix is not None and request.path.startswith(self.api_prefix)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if api:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            reason = exc.reason.lower() if exc.status != 405 else "only GET is allowed"
            resp = web.Response(status=exc.status, text=reason + "\n", content_type="text/plain", headers=headers)
        except Exception:
            if api:
                raise
            log.exception("quicmesh http: error serving %s", request.path)
            resp = web.Response(status=500, text="internal error\n", content_type="text/plain")
        if not api and not resp.prepared:
            resp.force_close()
            resp.headers["Cache-Control"] = "no-store"
        return resp

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
                f"refusing to serve {self._what} on non-loopback address {self._host!r}; "
                "set observability.http_allow_remote (allow_remote=True) to allow it",
            )
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
            keepalive_timeout=self.read_timeout + 2 * _LINGER,  # the gate's 408 comes first
            max_line_size=self.max_request_bytes,
            max_field_size=self.max_request_bytes,
            max_headers=64,
        )
        await runner.setup()
        factory = runner.server
        assert factory is not None
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: _Gate(self), host, self._port, reuse_address=True
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._server, self.protocol_factory = runner, server, factory
        sock = server.sockets[0].getsockname()
        bound_host, bound_port = str(sock[0]), int(sock[1])
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        return self.address

    async def stop(self) -> None:
        """Stop listening, end every request and close every connection; idempotent."""
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        if server is None:
            return
        server.close()
        if runner is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await runner.cleanup()
        for gate in list(self._gates):
            gate.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._idle.wait()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await server.wait_closed()
        self.protocol_factory = None


# -- the HTTP face's numbers in /metrics ----------------------------------------------------------------

HTTP_FACE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("quicmesh_http_api_connections", "gauge", "Connections the HTTP face serves now."),
    MetricSpec("quicmesh_http_api_connections_refused_total", "counter",
               "Connections to the HTTP face refused because max_connections were served."),
    MetricSpec("quicmesh_http_api_streams", "gauge", "Open SSE and WebSocket subscriptions of the HTTP face."),
    MetricSpec("quicmesh_http_api_streams_opened_total", "counter", "SSE and WebSocket subscriptions opened."),
    MetricSpec("quicmesh_http_api_stream_subscriptions", "gauge",
               "Node subscriptions the HTTP face's streams hold (one per pattern its streams share, "
               "one per work-queue group stream)."),
    MetricSpec("quicmesh_http_slow_consumers_closed_total", "counter",
               "SSE and WebSocket consumers closed because they fell behind (queue overflow or stalled write)."),
    MetricSpec("quicmesh_http_api_messages_streamed_total", "counter",
               "Messages written to SSE and WebSocket consumers."),
    MetricSpec("quicmesh_http_api_responses_total", "counter", "HTTP face responses, by status class.", ("code",)),
)
"""The metrics of the HTTP face (exported by :class:`HttpEndpoint` once a face registered)."""


@dataclass(slots=True)
class HttpFaceStats:
    """The HTTP face's counters, read by ``/metrics`` (:data:`HTTP_FACE_METRICS`)."""

    connections: Callable[[], int] = lambda: 0
    """Connections the face serves now."""
    refused: Callable[[], int] = lambda: 0
    """Connections refused at the face's connection cap, so far."""
    streams: int = 0
    """Open SSE and WebSocket subscriptions."""
    streams_opened_total: int = 0
    """Subscriptions opened so far."""
    stream_subscriptions: Callable[[], int] = lambda: 0
    """Node subscriptions the streams hold now: one per pattern they share, one per group member."""
    slow_consumers_closed_total: int = 0
    """Stream consumers closed because they fell behind."""
    messages_streamed_total: int = 0
    """Messages written to stream consumers."""
    responses_total: dict[str, int] = field(default_factory=dict)  # bounded: keys "1xx".."5xx"
    """Responses by status class (``"2xx"``, ``"4xx"``...)."""

    def count_response(self, status: int) -> None:
        """Count one response of ``status``."""
        key = f"{min(max(status // 100, 1), 5)}xx"
        self.responses_total[key] = self.responses_total.get(key, 0) + 1


class _FaceCollector:
    def __init__(self, stats: HttpFaceStats) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        values = (s.connections(), s.refused(), s.streams, s.streams_opened_total, s.stream_subscriptions(),
                  s.slow_consumers_closed_total, s.messages_streamed_total)
        for spec, value in zip(HTTP_FACE_METRICS, values, strict=False):
            fam: Metric
            if spec.type == "counter":
                fam = CounterMetricFamily(spec.family, spec.help)
            else:
                fam = GaugeMetricFamily(spec.family, spec.help)
            fam.add_metric([], float(value))
            yield fam
        spec = HTTP_FACE_METRICS[-1]
        codes = CounterMetricFamily(spec.family, spec.help, labels=list(spec.labels))
        for code, n in sorted(s.responses_total.items()):
            codes.add_metric([code], float(n))
        yield codes


# -- the monitoring endpoint ------------------------------------------------------------------------------


class HttpEndpoint(HttpServer):
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
        super().__init__(
            host,
            port,
            allow_remote=cfg.http_allow_remote if allow_remote is None else allow_remote,
            max_connections=max_connections or cfg.http_max_connections,
            max_request_bytes=max_request_bytes or cfg.http_max_request_bytes,
            read_timeout=read_timeout or cfg.http_read_timeout,
            what="metrics and health",
        )
        self._node = node
        self._sentinel = sentinel
        self._clock = clock
        self._metrics = NodeMetrics(node, sentinel, clock=clock)
        self._face: HttpFaceStats | None = None
        for path, handler in (("/metrics", self._get_metrics), ("/health", self._get_health),
                              ("/ready", self._get_ready), ("/live", self._get_live)):
            self.app.router.add_get(path, handler, allow_head=False)
        self.console = Console(node, self._metrics.collector.containers, sentinel, clock=clock)
        """The web console (``/ui``, :mod:`.ui_console`)."""
        self.console.mount(self.app)

    @property
    def metrics(self) -> NodeMetrics:
        """The node's metrics (its private prometheus registry)."""
        return self._metrics

    def export_face(self, stats: HttpFaceStats) -> None:
        """Export the HTTP face's numbers (:data:`HTTP_FACE_METRICS`) in /metrics; once."""
        if self._face is None:
            self._face = stats
            self._metrics.registry.register(_FaceCollector(stats))

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _get_live(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type="text/plain")

    async def _get_ready(self, request: web.Request) -> web.Response:
        ok, why = self._node.ready()
        return _json_response({"ready": ok, "reason": why}, 200 if ok else 503)

    async def _get_health(self, request: web.Request) -> web.Response:
        verdict = self._sentinel.verdict(self._clock()) if self._sentinel is not None else None
        return _json_response(health_document(self._node, self._metrics.collector.containers, verdict))


def _json_response(doc: Any, status: int = 200) -> web.Response:
    body = (json.dumps(doc, default=str, separators=(",", ":")) + "\n").encode()
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json"})
