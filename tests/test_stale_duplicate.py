"""A connection whose path died loses the duplicate tie-break to the peer's new one (QUIC, loopback).

CI met it in ``tests/test_lab_relay.py``: the mesh had linked two NATed nodes through a relay,
dialed by the node with the smaller id; the relay was killed, and the other node's ``connect``
through the second relay returned the old connection (the smaller dialer's survives the tie-break)
until it timed out (``transport.idle_timeout``, 30 s by default), so calls to the peer failed all
that time. A connection that received nothing for twice ``transport.keepalive_interval`` (a live
one hears the peer's pings or pongs every interval) is *stale*, and a live new connection wins
over it at both ends. Here the dead path is two nodes whose old connection's datagrams are dropped
at both ends (the new connection's are not).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.config.discovery import DiscoveryConfig
from quicmesh.identity import KeyPair
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic_connection import QuicConnection
from quicmesh.testing.wait import eventually

KEEPALIVE = 0.3
CFG = TransportConfig(keepalive_interval=KEEPALIVE, idle_timeout=20.0, handshake_timeout=5.0)


def _ordered_keys() -> tuple[KeyPair, KeyPair]:
    a, b = KeyPair.generate(), KeyPair.generate()
    return (a, b) if a.node_id < b.node_id else (b, a)


def _silence(conn: QuicConnection) -> None:
    """Drop every datagram this connection receives from now on (its path died)."""
    proto: Any = conn._proto

    def drop(*_args: Any, **_kw: Any) -> None:
        return None

    proto.datagram_received = drop
    proto.datagrams_received = drop


async def test_a_connection_through_a_dead_path_is_superseded_by_a_new_dial() -> None:
    small_key, large_key = _ordered_keys()
    cfg = NodeConfig(realm="stale", transport=CFG, discovery=DiscoveryConfig(local=False))
    small = await Node.start(cfg, keypair=small_key)
    large = await Node.start(cfg, keypair=large_key)
    try:
        async def echo(p: bytes) -> bytes:
            return p

        await small.advertise("echo", echo)
        await small.connect(large.address)  # dialed by the smaller id: the tie-break keeps it
        await eventually(lambda: small.transport.get(large.id) is not None and large.transport.get(small.id)
                         is not None, timeout=10, what="the first connection at both ends")
        old_s, old_l = small.transport.get(large.id), large.transport.get(small.id)
        assert isinstance(old_s, QuicConnection) and isinstance(old_l, QuicConnection)
        await large.wait_for_provider("echo", 10)
        assert await large.call("echo", b"before", timeout=5) == b"before"
        assert not old_s.stale and not old_l.stale
        # the path dies at both ends
        t0 = time.monotonic()
        _silence(old_s)
        _silence(old_l)
        await eventually(lambda: old_s.stale and old_l.stale, timeout=5, what="the old connection stale")
        silent = time.monotonic() - t0
        assert 2 * KEEPALIVE <= silent <= 2 * KEEPALIVE + 2.0, silent
        # the larger node dials again: the new connection wins at both ends, though the old one
        # was dialed by the smaller id and has not timed out
        new = await large.connect(small.address)
        assert large.transport.get(small.id) is not old_l
        assert old_l.closed
        await eventually(lambda: small.transport.get(large.id) not in (None, old_s), timeout=5,
                         what="the smaller node's survivor is the new connection")
        assert new == small.id
        t1 = time.monotonic()
        assert await large.call("echo", b"after", timeout=3) == b"after"
        print(f"\nold connection stale after {silent:.2f} s of silence (keepalive {KEEPALIVE} s); "
              f"a new dial superseded it at both ends; call over the new one {1e3 * (time.monotonic() - t1):.1f} ms")
    finally:
        await asyncio.gather(large.stop(), small.stop())
