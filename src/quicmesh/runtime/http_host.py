"""What the HTTP face (:mod:`.http_api`) needs of the node it serves (so that it does not import
the node module, which starts it)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from ..bounded import ContainerRegistry
from ..config import NodeConfig
from ..core.guard import Guard
from .handles import QueueHandle
from .log_handles import ReplicatedMap
from .message import Message

__all__ = ["HttpFaceHost"]


class _Guarded(Protocol):
    @property
    def guard(self) -> Guard: ...


class HttpFaceHost(Protocol):
    """What the HTTP face needs of its node (:class:`~quicmesh.runtime.node.Node` is one): the
    public pub/sub, RPC and map calls, the guard (trust, permissions, denial counts), its
    registry and config."""

    @property
    def registry(self) -> ContainerRegistry: ...

    @property
    def config(self) -> NodeConfig: ...

    @property
    def core(self) -> _Guarded: ...

    async def subscribe(self, pattern: str, *, queue_size: int | None = None,
                        group: str | None = None) -> QueueHandle[Message]: ...

    def publish(self, topic: str, payload: bytes) -> Awaitable[None]: ...

    async def call(self, name: str, payload: bytes, *, timeout: float | None = None) -> bytes: ...

    async def kv(self, name: str) -> ReplicatedMap: ...
