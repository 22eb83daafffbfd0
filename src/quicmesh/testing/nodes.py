"""In-process nodes for tests and scripts: start several :class:`~quicmesh.runtime.node.Node`\\ s
of one realm on loopback and stop every one of them on the way out, in reverse order, whatever
happened inside.

    async with NodeGroup("demo") as group:
        a = await group.start()
        b = await group.start(bootstrap=(a.address,))
        ...

Each :meth:`NodeGroup.start` builds a :class:`~quicmesh.config.NodeConfig` from the group's
defaults and its own keyword arguments (its own win), so a test states only what it varies.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ..config import NodeConfig
from ..runtime.node import Node

__all__ = ["NodeGroup"]


class NodeGroup:
    """Nodes of one realm started in this process, stopped together (see the module docstring).

    ``defaults`` are :class:`~quicmesh.config.NodeConfig` fields every node of the group gets
    unless :meth:`start` names them."""

    def __init__(self, realm: str, **defaults: Any) -> None:
        self.realm = realm
        self.defaults = defaults
        self.nodes: list[Node] = []

    async def start(self, **fields: Any) -> Node:
        """Start one node (``NodeConfig(realm=..., **defaults, **fields)``) and keep it for
        :meth:`stop`."""
        config = NodeConfig(**{"realm": self.realm, **self.defaults, **fields})
        node = await Node.start(config)
        self.nodes.append(node)
        return node

    async def stop(self) -> None:
        """Stop every node started, newest first (idempotent)."""
        while self.nodes:
            await self.nodes.pop().stop()

    async def __aenter__(self) -> NodeGroup:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
