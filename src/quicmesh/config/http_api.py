"""HTTP face configuration (issue #15), kept apart from :mod:`.schema` (which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from .values import MiB

__all__ = ["HttpApiConfig"]


@dataclass(frozen=True, slots=True)
class HttpApiConfig:
    """The HTTP face (``/v1``: publish, subscribe over SSE or WebSocket, call, maps), for
    programs in any language. Off unless ``listen`` is set (``--http-api``)."""

    listen: str | None = None
    """``HOST:PORT`` of the HTTP face; ``None`` (default): off. When it equals ``http`` (the same
    string), one server serves the monitoring routes and ``/v1`` together (and
    ``observability.http_allow_remote`` then governs a non-loopback address). On its own it may
    bind any address, as the gateway does: requests are admitted like light clients (bearer tokens
    in an authority realm; in an open realm anyone who reaches it may act)."""
    max_connections: int = 256
    """HTTP connections the face holds at once (count, default 256); one more is answered 503 and
    closed. Sharing the ``http`` address, the server holds this many plus
    ``observability.http_max_connections``."""
    max_streams: int = 64
    """Open subscriptions (SSE and WebSocket together, count, default 64); more get 429."""
    stream_queue_size: int = 256
    """Messages queued for one SSE or WebSocket consumer (count, default 256); a consumer that
    lets it overflow is closed as a slow consumer and counted."""
    max_body_bytes: int = 1 * MiB
    """Largest request body (bytes, default 1 MiB): a publish, call or map value; larger gets 413."""
    max_pending_bytes: int = 16 * MiB
    """Request body bytes held at once over every request (bytes, default 16 MiB); a request that
    would pass it gets 429."""
    max_maps: int = 64
    """Replicated maps the face keeps open for ``/v1/kv`` (count, default 64; least recently used
    closed first)."""
    read_timeout: float = 10.0
    """Seconds a client has to send its request head (408 after), and the idle time after which a
    kept-alive connection is closed (default 10)."""
    heartbeat: float = 15.0
    """Seconds between keep-alive pings on an idle SSE or WebSocket stream (default 15), so a
    vanished consumer is noticed and released."""
    write_timeout: float = 10.0
    """Seconds one write to an SSE or WebSocket consumer may stall before it is closed as a slow
    consumer (default 10)."""
    websocket_compress: bool = False
    """Offer WebSocket subscribers per-message compression (``permessage-deflate``, default off).
    Off, the frames of one message are built once for every WebSocket stream that shares its node
    subscription, and what waits for a stream leaves in one write; on, each stream compresses
    each message alone with its own compressor, and writes its frames one by one: fewer bytes on a
    slow link, several times the node's CPU per delivery."""
