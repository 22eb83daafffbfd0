"""The HTTP face of a node: publish, subscribe, call and replicated maps over HTTP, for programs in
any language (``--http-api HOST:PORT``, ``http_api.listen``; off by default).

Theory of operation
-------------------
:class:`HttpFace` adds the ``/v1`` routes to an aiohttp application served by
:class:`~quicmesh.observability.http.HttpServer` (its connection gate bounds connections, request
heads and their timing): the node's monitoring endpoint when ``http_api.listen`` equals ``http``
(one server for both, holding ``observability.http_max_connections`` plus
``http_api.max_connections`` connections), else a server of its own. Routes (the OpenAPI document
at ``GET /v1/openapi.json`` describes them, :mod:`.http_openapi`):

* ``POST /v1/publish/{topic}``: the body is the payload (``node.publish``);
* ``GET /v1/subscribe/{pattern}``: Server-Sent Events, or a WebSocket on ``Upgrade``
  (:mod:`.http_streams`);
* ``POST /v1/call/{name}?timeout=S``: the body is the request, the response body the reply
  (``node.call``; the timeout clamped like a light client's, to
  ``gateway.max_client_call_timeout``);
* ``GET`` and ``PUT /v1/kv/{map}/{key}``: a key of the replicated map ``map`` (``node.kv``); the
  face keeps up to ``http_api.max_maps`` maps open (least recently used closed first), so a map
  read over HTTP is replicated between requests.

Every request is checked like a light client's (:mod:`.http_auth`): a bearer token made from a
``quicmesh token issue`` token, its certificate valid now, its permissions allowing the action;
in an open realm no token is needed. Everything then goes through the node's public API, so the
node's own limits and permissions apply too.

Bounds: request bodies of at most ``http_api.max_body_bytes`` (413), read within
``http_api.read_timeout`` (408), and at most ``http_api.max_pending_bytes`` of bodies held at
once over all requests (429); a request holds its body's bytes until it is answered (a call's
until the reply). Streams have their own caps (:mod:`.http_streams`).

Errors are JSON ``{"error": "<ErrorClassName>", "message": ..., <fields>}`` with a status code
per class (``ERROR_STATUSES`` of :mod:`.http_openapi`): 400 bad topic or request, 401 no valid
token, 403 permission denied (``action``, ``subject``), 404 unknown route or key, 413 body too
large, 429 a limit (``limit``, ``capacity``), 502 the remote handler failed (``code``,
``retryable``), 503 no provider / overloaded / node stopping (``NoProvider`` is 503: the
procedure exists nowhere *now*, retrying later may succeed, unlike a 404 route), 504 call timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from ..bounded import LruMap
from ..core.groups import check_group
from ..errors import LimitExceeded, MessageTooLarge, PermissionDenied, QuicmeshError, RemoteError
from ..observability.http import HttpEndpoint, HttpFaceStats, HttpServer
from .gateway_budget import ClientBudgets
from .http_auth import MAX_BEARER, Access, HttpAuth, denied
from .http_host import HttpFaceHost
from .http_openapi import openapi_document
from .http_streams import StreamHub
from .log_handles import ReplicatedMap

__all__ = ["HttpFace", "error_name", "error_status"]

log = logging.getLogger("quicmesh.http_api")

_PREFIX = "/v1/"
_HEAD_ROOM = 2 * MAX_BEARER + 4096
"""Request head bytes the face accepts at least: a bearer of the longest kind (header or query) and the rest."""
_STATUS_BY_CLASS = {
    "NotAdmitted": 401, "PermissionDenied": 403, "OperationTooLarge": 413, "MessageTooLarge": 413,
    "InvalidOperation": 422, "LimitExceeded": 429, "RemoteError": 502, "NoProvider": 503, "Overloaded": 503,
    "NodeClosed": 503, "SubscriptionClosed": 503, "CallTimeout": 504, "InvalidTopic": 400,
}
_HTTP_NAMES = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 408: "RequestTimeout",
               413: "MessageTooLarge"}


class _Refused(Exception):
    """A refusal that is not a quicmesh error (bad parameter, missing key)."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name


def error_status(exc: BaseException) -> int:
    """The HTTP status answering ``exc`` (by its class, then its nearest listed base class)."""
    for cls in type(exc).__mro__:
        status = _STATUS_BY_CLASS.get(cls.__name__)
        if status is not None:
            return status
    return 400 if isinstance(exc, ValueError | TypeError) else 500


def error_name(exc: BaseException) -> str:
    """The ``error`` an answer names for ``exc``: its class, or the nearest public one
    (:mod:`quicmesh.errors`) it derives from, so an internal subclass (a callee's handler that ran
    out of time, ``HandlerTimedOut``, is a ``CallTimeout``) never reaches HTTP clients as a name
    the API does not list."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "quicmesh.errors":
            return cls.__name__
    return type(exc).__name__


def _error(status: int, name: str, message: str, headers: dict[str, str] | None = None,
           **fields: Any) -> web.Response:
    doc = {"error": name, "message": message[:1000], **fields}
    body = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json", **(headers or {})})


def _error_of(exc: Exception, realm: str) -> web.Response:
    status = error_status(exc)
    fields: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, PermissionDenied):
        fields = denied(exc)
    elif isinstance(exc, LimitExceeded):
        fields = {"limit": exc.limit, "capacity": exc.capacity}
    elif isinstance(exc, RemoteError):
        fields = {"code": exc.code, "retryable": exc.retryable}
    if status == 401:
        headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
    elif status in (429, 503):
        headers["Retry-After"] = "1"
    return _error(status, error_name(exc), str(exc), headers, **fields)


def _version() -> str:
    try:
        return importlib.metadata.version("quicmesh")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class HttpFace:
    """The ``/v1`` HTTP routes of ``node`` (see the module docstring). ``endpoint`` is the node's
    monitoring endpoint, if any: the face mounts on it when both share an address, and exports
    its numbers in its ``/metrics`` either way. Create it before the endpoint starts."""

    def __init__(self, node: HttpFaceHost, endpoint: HttpEndpoint | None = None) -> None:
        cfg = node.config.http_api
        if cfg.listen is None:
            raise ValueError("http_api.listen is not set")
        self._node = node
        self._cfg = cfg
        self.stats = HttpFaceStats()
        """Counters exported in /metrics (:data:`~quicmesh.observability.http.HTTP_FACE_METRICS`)."""
        self.auth = HttpAuth(node.core.guard, registry=node.registry)
        """Bearer tokens and permission checks."""
        self.streams = StreamHub(node, cfg, self.stats, node.registry)
        """The open SSE and WebSocket subscriptions."""
        self._maps: LruMap[str, ReplicatedMap] = LruMap(
            "http_api.maps", cfg.max_maps, on_evict=self._evicted, registry=node.registry
        )
        self._evicted_maps: list[ReplicatedMap] = []  # bounded: one per map opened, closed at once after
        self._budgets = ClientBudgets(node.config.gateway)  # a call's timeout is clamped like a light client's
        self.pending_bytes = 0
        """Request body bytes held now (at most ``http_api.max_pending_bytes``)."""
        self.shared = endpoint is not None and cfg.listen == node.config.http
        """Whether the face is served by the monitoring endpoint's server."""
        server: HttpServer
        head = max(node.config.observability.http_max_request_bytes, _HEAD_ROOM)  # room for a bearer
        if self.shared:
            assert endpoint is not None
            server = endpoint
            server.max_connections += cfg.max_connections
            server.max_request_bytes = max(server.max_request_bytes, head)
        else:
            host, _, port = cfg.listen.rpartition(":")
            server = HttpServer(
                host, int(port), allow_remote=True, max_connections=cfg.max_connections, max_request_bytes=head,
                read_timeout=cfg.read_timeout, max_body_bytes=cfg.max_body_bytes, what="the HTTP API",
            )
        self.server = server
        self.stats.connections = lambda: server.active_connections
        self.stats.refused = lambda: server.refused_total
        if endpoint is not None:
            endpoint.export_face(self.stats)
        self._install(server.app)
        self.address: str | None = None
        """The bound ``HOST:PORT`` once started."""

    def _install(self, app: web.Application) -> None:
        self.server.api_prefix = _PREFIX
        app.middlewares.append(self._middleware)
        r = app.router
        r.add_post("/v1/publish/{topic}", self._publish)
        r.add_get("/v1/subscribe/{pattern}", self._subscribe, allow_head=False)
        r.add_post("/v1/call/{name}", self._call)
        r.add_get("/v1/kv/{map}/{key:.+}", self._kv_get, allow_head=False)
        r.add_put("/v1/kv/{map}/{key:.+}", self._kv_put)
        r.add_get("/v1/openapi.json", self._openapi, allow_head=False)

    async def start(self) -> str:
        """Serve (a shared endpoint is started by the node's observability); returns the address."""
        self.address = self.server.address if self.shared else await self.server.start()
        assert self.address is not None
        return self.address

    async def stop(self) -> None:
        """End every stream, stop serving (its own server) and close the maps held; idempotent."""
        self.streams.close_all()
        if not self.shared:
            await self.server.stop()
        for name in list(self._maps):
            handle = self._maps.pop(name)
            if handle is not None:
                with contextlib.suppress(Exception):
                    await handle.close()

    # -- plumbing ---------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """JSON errors and response counting for ``/v1``."""
        if not request.path.startswith(_PREFIX):
            return await handler(request)
        resp: web.StreamResponse
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            name = _HTTP_NAMES.get(exc.status, "HttpError")
            resp = _error(exc.status, name, exc.reason, allow)
        except _Refused as exc:
            resp = _error(exc.status, exc.name, str(exc))
        except QuicmeshError as exc:
            resp = _error_of(exc, self._node.config.realm)
        except (ValueError, TypeError) as exc:
            resp = _error(400, "BadRequest", str(exc))
        except Exception as exc:
            log.exception("http api: error serving %s %s", request.method, request.path)
            resp = _error(500, "InternalError", type(exc).__name__)
        if isinstance(resp, web.Response) or not resp.prepared:  # streams are counted as they open
            self.stats.count_response(resp.status)
        return resp

    def _access(self, request: web.Request) -> Access:
        return self.auth.authenticate(request.headers.get("Authorization"), request.query.get("access_token"))

    @contextlib.asynccontextmanager
    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        """The request body, its bytes held against ``max_pending_bytes`` until the block ends."""
        cap = self._cfg.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > cap:
            raise MessageTooLarge(declared, cap)
        hold = declared if declared is not None else cap
        budget = self._cfg.max_pending_bytes
        if self.pending_bytes + hold > budget:
            raise LimitExceeded("http_api.max_pending_bytes", budget,
                                f"http_api.max_pending_bytes reached ({budget} bytes of request bodies held)")
        self.pending_bytes += hold
        try:
            body = bytearray()
            try:
                async with asyncio.timeout(self._cfg.read_timeout):
                    while len(body) <= cap:
                        chunk = await request.content.read(cap + 1 - len(body))
                        if not chunk:
                            break
                        body += chunk
            except TimeoutError:
                raise _Refused(408, "RequestTimeout", "the request body did not arrive in time") from None
            if len(body) > cap:
                raise MessageTooLarge(len(body), cap)
            yield bytes(body)
        finally:
            self.pending_bytes -= hold

    def _evicted(self, name: str, handle: ReplicatedMap) -> None:
        self._evicted_maps.append(handle)

    async def _map(self, name: str) -> ReplicatedMap:
        """The map ``name``, opened once and kept (least recently used closed past ``max_maps``)."""
        handle = self._maps.get(name)
        if handle is not None:
            return handle
        opened = await self._node.kv(name)
        handle = self._maps.get(name)  # another request may have opened it meanwhile
        if handle is not None:
            await opened.close()
            return handle
        self._maps.set(name, opened)
        while self._evicted_maps:
            await self._evicted_maps.pop().close()
        return opened

    # -- routes ---------------------------------------------------------------------------------------

    async def _publish(self, request: web.Request) -> web.Response:
        access = self._access(request)
        topic = request.match_info["topic"]
        self.auth.require(access, "publish", topic)
        async with self._body(request) as body:
            await self._node.publish(topic, body)
        return web.json_response({"topic": topic, "bytes": len(body)})

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        access = self._access(request)
        pattern = request.match_info["pattern"]
        self.auth.require(access, "subscribe", pattern)
        group = request.query.get("group")  # #15: a work-queue group member (one member per message)
        if group is not None:
            try:
                check_group(group)
            except ValueError as exc:
                raise _Refused(400, "BadRequest", str(exc)) from None
        return await self.streams.serve(request, pattern, self.auth.delivery_filter(access), group=group)

    async def _call(self, request: web.Request) -> web.Response:
        access = self._access(request)
        name = request.match_info["name"]
        self.auth.require(access, "call", name)
        timeout = self._node.config.rpc.default_timeout
        raw = request.query.get("timeout")
        if raw is not None:
            try:
                timeout = float(raw)
            except ValueError:
                timeout = math.nan
            if not math.isfinite(timeout):
                raise _Refused(400, "BadRequest", f"timeout must be a number of seconds, got {raw[:40]!r}")
        timeout = self._budgets.clamp_timeout(timeout)
        async with self._body(request) as body:
            reply = await self._node.call(name, body, timeout=timeout)
        return web.Response(body=reply, content_type="application/octet-stream")

    async def _kv_get(self, request: web.Request) -> web.Response:
        access = self._access(request)
        name, key = request.match_info["map"], request.match_info["key"]
        self.auth.require_read(access, name)
        value = await (await self._map(name)).get(key)
        if value is None:
            raise _Refused(404, "KeyNotFound", f"map {name!r:.100} holds no key {key!r:.100}")
        return web.Response(body=value, content_type="application/octet-stream")

    async def _kv_put(self, request: web.Request) -> web.Response:
        access = self._access(request)
        name, key = request.match_info["map"], request.match_info["key"]
        self.auth.require(access, "log", name)
        async with self._body(request) as body:
            await (await self._map(name)).set(key, body)
        return web.json_response({"map": name, "key": key, "bytes": len(body)})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(_version()))
