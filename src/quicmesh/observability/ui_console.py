"""The web console: ``/ui`` on the node's monitoring HTTP address.

Theory of operation
-------------------
:class:`Console` adds five ``GET`` routes to an :class:`~.http.HttpServer`'s application:

* ``/ui``: one static HTML page, with ``/ui/app.js``, ``/ui/style.css`` and an icon (package data in
  ``observability/ui/``; no build step, no CDN: the page works offline). Every response carries
  a restrictive ``Content-Security-Policy`` (``default-src 'self'``, no inline script or style,
  no framing), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``. The
  script writes network strings (node ids, topic names, denial subjects) with ``textContent``
  only, never as HTML.
* ``/ui/state``: one JSON snapshot (:meth:`Console.snapshot`): node id, realm and mode, status
  and readiness, the node's gauges, every container group's fill, the leak sentinel's verdict,
  and, when the node has a ``console()`` method (:class:`ConsoleSource`; the runtime node does),
  its peers, topics, subscriptions, services and providers, and recent permission denials.
* ``/ui/events``: Server-Sent Events, one ``state`` event carrying the same snapshot every
  ``interval`` seconds (the page's live updates; ``EventSource`` reconnects by itself). Bounded:
  at most ``max_streams`` streams are open at once (one more is answered ``503``, counted in
  :attr:`Console.refused_total`); a write that has not completed within ``write_timeout``
  seconds (a consumer that stopped reading) closes the stream and is counted in
  :attr:`Console.slow_closed_total`; a stream ends after ``max_stream_seconds`` (the browser
  reconnects), so no connection is held forever; when the server stops, every stream ends at
  once. Nothing is queued per stream: each tick builds one snapshot and writes it, so a slow
  consumer costs one snapshot at most.

The console reads the node through :class:`~.view.NodeView` (and the optional ``console()``),
so observability still imports nothing from the runtime. The sparklines are kept by the page
(the last 60 fills of each container), not by the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from .containers import ContainerAggregator
from .sentinel import LeakSentinel
from .view import NodeView, gauges_of

__all__ = ["CSP", "Console", "ConsoleSource"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""The Content-Security-Policy of every ``/ui`` response."""

_ASSETS = {
    "/ui": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/style.css": ("style.css", "text/css"),
    "/ui/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@runtime_checkable
class ConsoleSource(Protocol):
    """A node that shows its insides to the console (optional, beside :class:`~.view.NodeView`)."""

    def console(self) -> Mapping[str, Any]:
        """JSON-ready ``{"address", "peers", "peers_total", "topics", "topics_total",
        "subscriptions", "subscriptions_total", "services", "services_total", "denials"}``
        (see :func:`quicmesh.runtime.ui_state.console_state`); lists already bounded."""


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("ui", name).read_bytes()


class Console:
    """The ``/ui`` routes of one node (see the module docstring).

    ``containers`` is the endpoint's container aggregator (the groups ``/metrics`` exports),
    ``sentinel`` and ``clock`` as for :class:`~.http.HttpEndpoint`.
    """

    def __init__(
        self,
        node: NodeView,
        containers: ContainerAggregator,
        sentinel: LeakSentinel | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_streams: int = 4,
        interval: float = 1.0,
        write_timeout: float = 5.0,
        max_stream_seconds: float = 600.0,
    ) -> None:
        self._node = node
        self._containers = containers
        self._sentinel = sentinel
        self._clock = clock
        self.max_streams = max_streams
        """Event streams (``/ui/events``) open at once; one more is answered 503."""
        self.interval = interval
        """Seconds between two snapshots on an event stream."""
        self.write_timeout = write_timeout
        """Seconds one snapshot may take to be written before the stream is closed as slow."""
        self.max_stream_seconds = max_stream_seconds
        """Seconds an event stream lasts before the server ends it (the browser reconnects)."""
        self.streams = 0
        """Event streams open now."""
        self.streams_opened_total = 0
        """Event streams opened so far."""
        self.refused_total = 0
        """Event streams refused because ``max_streams`` were open."""
        self.slow_closed_total = 0
        """Event streams closed because a write did not complete within ``write_timeout``."""
        self._assets: dict[str, bytes] = {}  # bounded: the four files of _ASSETS
        self._closing = asyncio.Event()

    def mount(self, app: web.Application) -> None:
        """Add the ``/ui`` routes to ``app`` (before it starts)."""
        for path in _ASSETS:
            app.router.add_get(path, self._get_asset, allow_head=False)
        app.router.add_get("/ui/", self._redirect, allow_head=False)
        app.router.add_get("/ui/state", self._get_state, allow_head=False)
        app.router.add_get("/ui/events", self._get_events, allow_head=False)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        """The server is stopping: end every event stream now (not after ``interval``)."""
        self._closing.set()

    # -- the snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The document the page shows (``/ui/state``, and each ``/ui/events`` event)."""
        node = self._node
        verdict = self._sentinel.verdict(self._clock()) if self._sentinel is not None else None
        ok, why = node.ready()
        realm_health = getattr(node, "realm_health", None)
        realm = realm_health() if callable(realm_health) else {"mode": "", "name": str(node.realm)}
        containers = [{"name": g.name, **g.to_dict()} for g in self._containers.collect()]
        doc: dict[str, Any] = {
            "node_id": str(node.node_id),
            "realm": realm,
            "status": "degraded" if verdict is not None and verdict.degraded else "ok",
            "ready": {"ok": ok, "reason": why},
            "time": time.time(),
            "gauges": gauges_of(node).to_dict(),
            "containers": containers,
            "sentinel": verdict.to_dict() if verdict is not None else None,
            "ui": {"streams": self.streams, "max_streams": self.max_streams, "refused_total": self.refused_total,
                   "slow_closed_total": self.slow_closed_total},
        }
        if isinstance(node, ConsoleSource):
            doc.update(node.console())
        return doc

    def _body(self) -> bytes:
        return json.dumps(self.snapshot(), default=str, separators=(",", ":")).encode()

    # -- handlers ----------------------------------------------------------------------------------

    async def _get_asset(self, request: web.Request) -> web.Response:
        name, content_type = _ASSETS[request.path]
        body = self._assets.get(name)
        if body is None:
            body = self._assets[name] = _asset(name)
        return web.Response(body=body, headers={"Content-Type": f"{content_type}; charset=utf-8",
                                                **_SECURITY_HEADERS})

    async def _redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/ui"})  # returned: errors are re-rendered

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.Response(body=self._body() + b"\n",
                            headers={"Content-Type": "application/json", **_SECURITY_HEADERS})

    async def _get_events(self, request: web.Request) -> web.StreamResponse:
        if self.streams >= self.max_streams:
            self.refused_total += 1
            return web.Response(status=503, text="too many console streams\n", content_type="text/plain",
                                headers={"Retry-After": "5"})
        self.streams += 1
        self.streams_opened_total += 1
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_SECURITY_HEADERS})
            resp.force_close()  # one stream per connection; the gate's connection cap applies
            await resp.prepare(request)
            deadline = asyncio.get_running_loop().time() + self.max_stream_seconds
            first = True
            while asyncio.get_running_loop().time() < deadline and not self._closing.is_set():
                if not first:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self._closing.wait()
                    if self._closing.is_set():
                        break
                first = False
                data = (b"retry: 2000\nevent: state\ndata: " + self._body() + b"\n\n")
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await resp.write(data)
                except TimeoutError:
                    self.slow_closed_total += 1
                    if request.transport is not None:
                        request.transport.abort()
                    break
                except (ConnectionError, RuntimeError):
                    break  # the browser went away
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
            return resp
        finally:
            self.streams -= 1
