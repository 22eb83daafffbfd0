"""What the gateway needs of the node it serves light clients through."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from ..bounded import ContainerRegistry
from ..config import NodeConfig
from .driver import Handler, Message
from .handles import QueueHandle
from .transport import Transport

__all__ = ["GatewayHost"]


class GatewayHost(Protocol):
    """What the gateway needs of its node (:class:`~quicmesh.runtime.node.Node` is one): the
    public pub/sub and RPC calls, its transport, registry and config."""

    @property
    def transport(self) -> Transport: ...

    @property
    def registry(self) -> ContainerRegistry: ...

    @property
    def config(self) -> NodeConfig: ...

    async def subscribe(self, pattern: str, *, queue_size: int | None = None,
                        group: str | None = None) -> QueueHandle[Message]: ...

    def publish(self, topic: str, payload: bytes) -> Awaitable[None]: ...

    async def advertise(self, name: str, handler: Handler, *, ttl: float | None = None,
                        metadata: bytes | None = None) -> None: ...

    async def unadvertise(self, name: str) -> None: ...

    async def call(self, name: str, payload: bytes, *, timeout: float | None = None) -> bytes: ...
