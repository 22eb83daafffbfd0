"""The node's replicated-log service: store, sync sessions, log handles, watchers and maps.

:class:`LogService` is driven by :class:`~quicmesh.runtime.node.Node` like the other core
machines: the node hands it peer events and ``l.*`` messages with ``now``, includes its
``next_deadline()`` in the node's single timer, and calls ``handle_timer(now)``. Effects it
produces go back through the node's ``run`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from random import Random
from typing import Any

from ..bounded import ContainerRegistry
from ..config import NodeConfig
from ..core.wire import Message
from ..identity import KeyPair, NodeId

__all__ = ["LogService"]


class LogService:
    """Replicated logs of one node (skeleton: logs are not wired yet)."""

    def __init__(
        self,
        keypair: KeyPair,
        config: NodeConfig,
        *,
        registry: ContainerRegistry,
        rng: Random,
        run: Callable[[Iterable[object]], None],
    ) -> None:
        self.keypair = keypair
        self.config = config
        self._run = run

    async def start(self) -> None:
        """Open the store (SQLite under ``config.data_dir``, else memory)."""

    async def stop(self) -> None:
        """Close sessions, watchers and the store."""

    def peer_connected(self, peer: NodeId, now: float) -> None:
        """A connection to ``peer`` is up."""

    def peer_disconnected(self, peer: NodeId, now: float) -> None:
        """The connection to ``peer`` is gone."""

    def handle_message(self, peer: NodeId, message: Message, now: float) -> None:
        """An ``l.*`` message from ``peer``."""

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``."""

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next."""
        return None

    def health(self) -> dict[str, Any]:
        """Store sizes and sync state for /health."""
        return {}
