"""#13 observed addresses over real QUIC on loopback: nodes on 127.0.0.1, .2 and .3 learn the
address their peers see them at; a node listening on 0.0.0.0 announces reachable addresses, never
the wildcard, and a node that only knows what it announced reaches it there."""

from __future__ import annotations

from collections.abc import Callable

from quicmesh.core.selfrecord import verify_record
from quicmesh.runtime.node import Node
from quicmesh.testing.nodes import NodeGroup
from quicmesh.testing.wait import eventually

REALM = "observed"


def _reported(n: Node) -> Callable[[], bool]:
    return lambda: n.address in n.mesh.observed.votes()


def _port(address: str) -> str:
    return address.rpartition(":")[2]


async def test_peers_on_three_loopback_addresses_see_each_other() -> None:
    async with NodeGroup(REALM) as nodes:
        a: Node = await nodes.start(listen="127.0.0.1:0")
        b: Node = await nodes.start(listen="127.0.0.2:0", bootstrap=(a.address,))
        c: Node = await nodes.start(listen="127.0.0.3:0", bootstrap=(a.address,))
        # a was dialed at its listen address by two distinct peers: confirmed
        await eventually(lambda: a.mesh.observed.votes().get(a.address, 0) >= 2, timeout=15,
                         what="a's address reported by b and c", detail=a.mesh.observed.stats)
        assert a.mesh.observed.confirmed() == (a.address,)
        # b and c dialed from their own listen sockets: a saw each at its listen address
        for n in (b, c):
            await eventually(_reported(n), timeout=15, what=f"{n.address} reported", detail=n.mesh.observed.stats)
        for n in (a, b, c):
            st = n.mesh.observed.stats()
            print(f"{n.address}: announced {st['announced']}, observed {st['observed']}")
            assert st["reports_ignored_total"] == 0
            assert n.mesh.observed.announced()[0] == n.address
        # c joined through a, whose FORWARDJOIN carried c's signed record to b unaltered
        rec = await eventually(lambda: b.mesh.book.record(c.id), timeout=15, what="b holds c's signed record")
        assert rec is not None and tuple(rec.addrs) == c.mesh.addresses
        assert verify_record(rec, c.trust.wire_id, c.id) == c.id
        health = a.health()["addresses"]
        assert health["observed"][0] == {"address": a.address, "reporters": 2, "confirmed": True}
        gauges = a.gauges()
        assert gauges["observed_reports_total"] >= 2 and gauges["observed_addresses_confirmed"] == 1


async def test_wildcard_listener_announces_reachable_addresses() -> None:
    async with NodeGroup(REALM) as nodes:
        w: Node = await nodes.start(listen="0.0.0.0:0")
        port = _port(w.address)
        assert w.address == f"0.0.0.0:{port}"
        assert w.mesh.addresses and not any(x.startswith("0.0.0.0") for x in w.mesh.addresses)
        b: Node = await nodes.start(listen="127.0.0.1:0", bootstrap=(f"127.0.0.1:{port}",))
        c: Node = await nodes.start(listen="127.0.0.2:0", bootstrap=(b.address,))

        def claims() -> tuple[str, ...]:
            entry = c.mesh.book.get(w.id)
            return entry.addresses if entry is not None else ()

        # c never dialed w by an address it was given: what it knows is what w announced (or b relayed)
        known = await eventually(claims, timeout=15, what="c learns w's addresses",
                                 detail=lambda: (w.mesh.addresses, c.mesh.book.stats()))
        print(f"wildcard node {w.address} announces {w.mesh.addresses}; a peer's book holds {known}")
        assert not any(x.startswith("0.0.0.0") or x.startswith("[::]") for x in known)
        assert all(_port(x) == port for x in known)
        # a new node given only one of those announced addresses reaches the wildcard node there
        d: Node = await nodes.start(listen="127.0.0.3:0", bootstrap=(known[0],))
        await eventually(lambda: w.transport.get(d.id) is not None, timeout=15,
                         what="d connected to w through an announced address")
        assert w.transport.get(d.id) is not None
