"""Two QUIC nodes on loopback, connected, for tests of one connection's behaviour."""

from __future__ import annotations

from typing import Any

from quicmesh.config import load_config
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually


async def node_pair(realm: str, transport: dict[str, Any]) -> tuple[Node, Node]:
    """Start node ``a``, then ``b`` bootstrapping from it (``transport`` overrides on both,
    local discovery off); return once each has the other as a peer."""
    ov: dict[str, Any] = {"realm": realm, "discovery": {"local": False}, "transport": transport}
    a = await Node.start(load_config(env={}, overrides=ov))
    b = await Node.start(load_config(env={}, overrides={**ov, "bootstrap": [a.address]}))
    await eventually(lambda: bool(a.peers() and b.peers()), timeout=20, what="the two nodes connected")
    return a, b


def only_connection(node: Node) -> Any:
    """The node's one transport connection (asserts there is exactly one)."""
    conns = node.transport.connections()
    assert len(conns) == 1, conns
    return conns[0]
