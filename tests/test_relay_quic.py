"""#13 relays over real QUIC on loopback: B announces only a relayed address (``relay.mode =
always``), A reaches it through R end to end (pub/sub and calls), the path is visible, and when
R dies B is reachable again through a second relay."""

from __future__ import annotations

import time

import pytest

from quicmesh.config import PunchConfig, TransportConfig
from quicmesh.config.relay import RelayConfig
from quicmesh.core.relay import RelayAddress
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic_connection import QuicConnection
from quicmesh.runtime.quic_transport import QuicTransport
from quicmesh.testing.nodes import NodeGroup
from quicmesh.testing.wait import eventually

REALM = "relay"
# on loopback every address is reachable, so a hole punch would always move a relayed connection
# to a direct path: these tests keep it relayed unless they turn punching on (the last one does)
NO_PUNCH = PunchConfig(enabled=False)


def _relay(**kw: object) -> RelayConfig:
    return RelayConfig(**kw)  # type: ignore[arg-type]


async def echo(payload: bytes) -> bytes:
    return b"echo:" + payload


async def test_peer_reachable_only_through_relay() -> None:
    async with NodeGroup(REALM, punch=NO_PUNCH) as nodes:
        r: Node = await nodes.start(relay=_relay(serve=True, mode="never"))
        b: Node = await nodes.start(bootstrap=(r.address,), relay=_relay(mode="always", via=(r.address,)))
        await eventually(lambda: b.relay_agent.relayed_addresses(), timeout=10, what="b holds a reservation at r")
        relayed = b.relay_agent.relayed_addresses()
        assert relayed == [str(RelayAddress(r.id, r.address, b.id))]
        assert b.mesh.addresses == tuple(relayed)  # announced, signed: the relayed address only
        # a joins the realm through b's relayed address: its only path to b goes through r
        a: Node = await nodes.start(bootstrap=(relayed[0],), relay=_relay(mode="never"))
        conn = await eventually(lambda: a.transport.get(b.id), timeout=10, what="a connected to b")
        assert conn is not None and conn.path == f"relayed:{r.id}"
        back = await eventually(lambda: b.transport.get(a.id), timeout=5, what="b sees a")
        assert back is not None and back.path == f"relayed:{r.id}"
        assert back.remote_address == str(RelayAddress(r.id, r.address, a.id))
        # pub/sub end to end through the relay
        async with await b.subscribe("t.>") as sub:
            await a.wait_for_subscriber("t.x", timeout=10)
            for i in range(100):
                await a.publish("t.x", str(i).encode())
            got = [(await sub.get()).payload for _ in range(100)]
            assert got == [str(i).encode() for i in range(100)]
        await b.advertise("echo", echo)
        await a.wait_for_provider("echo", timeout=10)
        assert await a.call("echo", b"hi", timeout=10) == b"echo:hi"
        st = r.relay_agent.gauges()
        print(f"relay forwarded {st['relay_forwarded_packets_total']:.0f} packets, "
              f"{st['relay_forwarded_bytes_total']:.0f} bytes; sessions {st['relay_sessions']:.0f}")
        assert st["relay_forwarded_packets_total"] > 10 and st["relay_sessions"] == 1
        assert st["relay_peers"] == 2 and st["relay_reservations"] == 1
        health = a.health()
        assert any(p["path"] == f"relayed:{r.id}" for p in health["relay"]["peers"])
        assert a.gauges()["peers_relayed"] == 1
        # the hook for hole punching: a connection moved to a direct path is reported once
        assert isinstance(a.transport, QuicTransport) and isinstance(conn, QuicConnection)
        seen: list[tuple[object, str]] = []
        a.transport.relay.on_path_change.append(lambda c, path: seen.append((c, path)))
        a.transport.relay.path_changed(conn)
        assert seen == []  # unchanged
        quic = conn._proto.quic
        relayed_addr = quic._remote_addr
        quic._remote_addr = ("127.0.0.1", 9)  # as qh3 does once a migration to a direct path is validated
        a.transport.relay.path_changed(conn)
        a.transport.relay.path_changed(conn)
        assert seen == [(conn, "direct")] and conn.path == "direct"
        quic._remote_addr = relayed_addr
        # the node's idle closes spare connections the relay uses (reservation at r; paths through r)
        for n in (a, b):
            rconn = n.transport.get(r.id)
            assert rconn is not None
            await rconn.close("idle")
            assert not rconn.closed
        assert isinstance(b.transport, QuicTransport) and b.transport.relay.idle_closes_refused >= 1


@pytest.mark.parametrize("death", ["stopped", "silent"])
async def test_second_relay_takes_over_when_the_first_dies(death: str) -> None:
    """The relay in use stops (closing its connections) or falls silent (as if SIGKILLed: its
    socket is gone, peers find out by the idle timeout); it is first in b's ``--relay-via``."""
    fast = TransportConfig(idle_timeout=2.0, keepalive_interval=0.3)
    async with NodeGroup(REALM, punch=NO_PUNCH) as nodes:
        r1: Node = await nodes.start(relay=_relay(serve=True, mode="never"))
        r2: Node = await nodes.start(relay=_relay(serve=True, mode="never"))
        r3: Node = await nodes.start(relay=_relay(serve=True, mode="never"))
        b: Node = await nodes.start(transport=fast, relay=_relay(
            mode="always", via=(r1.address, r2.address, r3.address), relays_wanted=1))
        await eventually(lambda: len(b.relay_agent.active) == 1, timeout=10, what="b reserved at one relay")
        assert list(b.relay_agent.active.keys()) == [r1.id]
        a: Node = await nodes.start(transport=fast, relay=_relay(mode="never"))
        await a.connect(b.relay_agent.relayed_addresses()[0])
        t0 = time.monotonic()
        if death == "stopped":
            await r1.stop()
        else:
            assert isinstance(r1.transport, QuicTransport) and r1.transport.endpoint is not None
            ep = r1.transport.endpoint
            assert ep.transport is not None
            ep.transport.close()  # no close reaches anyone
        await eventually(lambda: len(b.relay_agent.active) == 1 and r1.id not in b.relay_agent.active.keys(),
                         timeout=10, what="b reserved at another relay")
        await eventually(lambda: a.transport.get(b.id) is None, timeout=10, what="a's relayed path closed")
        new = b.relay_agent.relayed_addresses()[0]
        assert await a.connect(new) == b.id
        took = time.monotonic() - t0
        print(f"relay {death}: b reachable again through a second relay {took:.2f} s later "
              f"(b's failover {b.relay_agent.last_failover_seconds:.2f} s after it noticed)")
        assert took < 10 and b.relay_agent.failovers == 1
        assert b.mesh.addresses == (new,)


async def test_relay_found_through_its_signed_record() -> None:
    """No ``--relay-via``: b finds the relay in the signed self-record r announces
    (``relay:<r>@HOST:PORT``) and reserves there."""
    async with NodeGroup(REALM, punch=NO_PUNCH) as nodes:
        r: Node = await nodes.start(relay=_relay(serve=True, mode="never"))
        assert str(RelayAddress(r.id, r.address)) in r.mesh.addresses
        c: Node = await nodes.start(bootstrap=(r.address,), relay=_relay(mode="never"))
        b: Node = await nodes.start(bootstrap=(c.address,), relay=_relay(mode="always"))
        await eventually(lambda: b.relay_agent.relayed_addresses(), timeout=20, what="b found r and reserved there",
                         detail=lambda: b.relay_agent.health())
        assert b.relay_agent.relayed_addresses() == [str(RelayAddress(r.id, r.address, b.id))]


async def test_a_relayed_connection_goes_direct_by_a_hole_punch_through_its_relay() -> None:
    """With hole punching on (the default), the dialer of a relayed connection punches through
    the relay; the direct connection wins the duplicate rule on both sides and the relayed one is
    closed, while pub/sub goes on."""
    async with NodeGroup(REALM, punch=NO_PUNCH) as nodes:
        on = PunchConfig()
        r: Node = await nodes.start(relay=_relay(serve=True, mode="never"), punch=on)
        b: Node = await nodes.start(bootstrap=(r.address,), relay=_relay(mode="always", via=(r.address,)),
                              punch=on)
        await eventually(lambda: b.relay_agent.relayed_addresses(), timeout=10, what="b holds a reservation at r")
        relayed = b.relay_agent.relayed_addresses()[0]
        async with await b.subscribe("t.>") as sub:
            a: Node = await nodes.start(bootstrap=(relayed,), relay=_relay(mode="never"), punch=on)
            t0 = time.monotonic()
            first = await eventually(lambda: a.transport.get(b.id), timeout=10, what="a connected to b")
            assert first is not None
            was = first.path

            def direct_both() -> bool:
                ca, cb = a.transport.get(b.id), b.transport.get(a.id)
                return ca is not None and cb is not None and ca.path == cb.path == "direct"

            await eventually(direct_both, timeout=10, what="a and b on a direct path")
            took = time.monotonic() - t0
            await a.wait_for_subscriber("t.x", timeout=10)
            for i in range(50):
                await a.publish("t.x", str(i).encode())
            got = [(await sub.get()).payload for _ in range(50)]
            assert got == [str(i).encode() for i in range(50)]
        counters = a.holepunch.gauges()
        print(f"first path {was}; direct on both sides {took:.2f} s after a started; "
              f"punch successes {counters['holepunch_successes_total']:.0f}; 50 of 50 messages after")
        assert counters["holepunch_successes_total"] >= 1
