"""A finished QUIC connection is freed by reference counting, not left to the garbage collector.

qh3's connection object forms reference cycles with its TLS bridge and context (bound methods
kept as callbacks); the endpoint cuts them when a connection terminates
(:func:`quicmesh.runtime._quic_endpoint.break_cycles`). Before, the gateway's side of every light
client's connection waited for a collection, and with the node's garbage-collector setting
(``gc_young_threshold``) a gateway under ~240 connects/s held up to ~60 MB more RSS between
collections (#14)."""

from __future__ import annotations

import gc

from qh3.quic.connection import QuicConnection as Qh3Connection

from quicmesh.config import NodeConfig
from quicmesh.config.discovery import DiscoveryConfig
from quicmesh.runtime.client import Client
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

CYCLES = 10


def _live_qh3_connections() -> int:
    """The gateway's side: a light client sends its close and drops its endpoint without the
    draining period, so its own connection never terminates in qh3's sense; its objects go with
    the ``Client`` (a cycle of its own, collected by the client process's collector)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, Qh3Connection) and not o._is_client)


async def test_closed_light_client_connections_are_freed_without_a_collection() -> None:
    node = await Node.start(NodeConfig(realm="cycles", discovery=DiscoveryConfig(local=False)))
    try:
        warm = await Client.connect(node.address, realm="cycles", reconnect=False)
        await warm.close()
        gc.collect()
        gc.disable()  # from here only reference counting frees anything
        try:
            base = _live_qh3_connections()
            for _ in range(CYCLES):
                client = await Client.connect(node.address, realm="cycles", reconnect=False)
                sub = await client.subscribe("t")
                await client.publish("t", b"x")
                assert (await sub.get()).payload == b"x"
                await client.close()
            # the gateway's connections terminate after their draining period
            await eventually(lambda: _live_qh3_connections() <= base, timeout=10,
                             detail=lambda: f"{_live_qh3_connections() - base} of the gateway's {CYCLES} qh3 "
                                            "connections still alive after their close (kept by reference cycles)")
        finally:
            gc.enable()
    finally:
        await node.stop()
