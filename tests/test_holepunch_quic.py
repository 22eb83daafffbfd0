"""#13 hole punching in the runtime over real QUIC on loopback (no NAT: the punch's exchange
through K, its dials from the listening socket, the result, the metrics). The NAT cases are
``test_lab_punch.py``."""

from __future__ import annotations

from quicmesh.config import NodeConfig
from quicmesh.identity import KeyPair
from quicmesh.observability.metrics import render
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

REALM = "punch-quic"


async def test_punch_through_k_over_quic() -> None:
    cfg = {"realm": REALM, "listen": "127.0.0.1:0"}
    k = await Node.start(NodeConfig(**cfg))  # type: ignore[arg-type]
    a = await Node.start(NodeConfig(**cfg, bootstrap=(k.address,)))  # type: ignore[arg-type]
    b = await Node.start(NodeConfig(**cfg, bootstrap=(k.address,)))  # type: ignore[arg-type]
    try:
        await eventually(lambda: a.transport.get(k.id) is not None and b.transport.get(k.id) is not None
                         and a.mesh.book.own_record is not None and b.mesh.book.own_record is not None,
                         timeout=15, what="a and b connected to k, with records")
        conn = a.transport.get(b.id)
        if conn is not None:  # the mesh may have linked them already: start from no connection
            await conn.close()
            await eventually(lambda: a.transport.get(b.id) is None and b.transport.get(a.id) is None, timeout=10,
                             what="a-b closed")
        r = await a.punch(b.id, via=k.id)
        print(f"punch a -> b through k on loopback: {r}")
        assert r.ok and r.reason in ("direct", "already_direct")
        assert a.transport.get(b.id) is not None
        again = await a.punch(b.id)
        assert again.ok and again.reason == "already_direct" and again.attempts == 0
        g = a.gauges()
        assert g["holepunch_started_total"] >= 1 or r.reason == "already_direct"
        assert "holepunch_time_to_direct_seconds_sum" in g and "holepunch_failures_total" in g
        h = a.health()["holepunch"]
        assert h["active"] == 0 and isinstance(h["trace"], list)
        # K forwarded (or the mesh linked a and b before): its numbers are in /metrics too
        # (its forward of A's SYNC may come after A's dial already connected: on loopback it can)
        await eventually(lambda: k.gauges()["holepunch_forwarded_total"] >= (3 if r.reason == "direct" else 0),
                         timeout=5, what="K forwarded CONNECT, REPLY and SYNC")
        text = render(a).decode()
        assert 'name="holepunch_successes_total"' in text and 'name="holepunch_time_to_direct_seconds_sum"' in text
        # a punch to a node nobody knows: refused by K (not connected), ended at once, no hang
        stranger = KeyPair.generate().node_id
        miss = await a.punch(stranger, via=k.id)
        print(f"punch to an unknown node: {miss}")
        assert not miss.ok and miss.reason == "unreachable" and miss.attempts == 1
        assert a.gauges()["holepunch_failures_unreachable_total"] >= 1
    finally:
        for n in (b, a, k):
            await n.stop()
