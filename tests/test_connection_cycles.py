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


async def test_an_idle_connection_makes_its_wait_queues_only_when_needed() -> None:
    """#14: the queues for held datagrams and undelivered messages, and the closed event, are
    made on first use; an idle client's connection at the gateway has none (2.3 KiB less per
    client: 60.3 -> 58.0 KiB of gateway RSS per connected client, 800 clients), and one that was
    held and resumed still delivers everything (``security/test_inbox.py`` floods it)."""
    from quicmesh.runtime.quic_connection import QuicConnection

    node = await Node.start(NodeConfig(realm="lazyq", discovery=DiscoveryConfig(local=False)))
    try:
        client = await Client.connect(node.address, realm="lazyq", reconnect=False)
        sub = await client.subscribe("lazyq.t")
        await client.publish("lazyq.t", b"one", confirm=True)
        assert (await sub.get()).payload == b"one"
        conns = node.transport.clients()  # the gateway's side
        assert len(conns) == 1 and isinstance(conns[0], QuicConnection)
        conn = conns[0]
        assert conn._undelivered is None and conn._closed_evt is None and conn._proto._held is None
        conn.pause_reading()
        conn._proto.hold()
        await client.publish("lazyq.t", b"two")
        await eventually(lambda: bool(conn._proto._held or conn._undelivered), timeout=10, what="held input")
        conn._proto.release()
        conn.resume_reading()
        assert (await sub.get()).payload == b"two"
        await client.close()
        await eventually(lambda: not node.transport.clients(), timeout=10, what="the client gone")
        await conn.wait_closed()  # made on demand, after the close
    finally:
        await node.stop()
