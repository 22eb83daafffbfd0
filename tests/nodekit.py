"""Two QUIC nodes on loopback, connected, for tests of one connection's behaviour; and one
``quicmesh node --control`` process started and stopped at once (:func:`node_command`)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def node_command(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``quicmesh node --control --no-local-discovery FLAGS`` and stop it at once (its first
    stdout line is the ``listening`` event when it started)."""
    return subprocess.run(
        [sys.executable, "-m", "quicmesh", "node", "--control", "--no-local-discovery", *flags],
        input='{"cmd": "stop"}\n', capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )
