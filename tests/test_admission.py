"""The admission table shared by the QUIC and in-memory transports (no network, no event loop)."""

from __future__ import annotations

import asyncio
import dataclasses

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import TransportConfig
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.wire import Codec, Message
from quicmesh.errors import AdmissionRefused
from quicmesh.identity import KeyPair, NodeId
from quicmesh.runtime.admission import AdmissionTable
from quicmesh.runtime.memory import MemoryNetwork, MemoryTransport
from quicmesh.runtime.transport import Connection

CFG = TransportConfig(max_connections=2, max_incoming_handshakes=2)


class Conn:
    def __init__(self, peer: NodeId, *, outbound: bool, instance: bytes = b"i", path: str = "direct",
                 stale: bool = False, in_tls: bool = False) -> None:
        self.peer = peer
        self.outbound = outbound
        self.peer_instance = instance
        self.closed = False
        self.path = path
        self.stale = stale
        self.in_tls = in_tls

    @property
    def target(self) -> NodeId | None:
        return self.peer


def ids() -> tuple[NodeId, NodeId]:
    x, y = KeyPair.generate().node_id, KeyPair.generate().node_id
    return (x, y) if x < y else (y, x)


def table(local: NodeId, cfg: TransportConfig = CFG, registry: ContainerRegistry | None = None) -> tuple[
        AdmissionTable[Conn], list[Conn]]:
    evicted: list[Conn] = []
    t: AdmissionTable[Conn] = AdmissionTable(local, cfg, on_evict=lambda _p, c: evicted.append(c),
                                             registry=registry if registry is not None else ContainerRegistry())
    return t, evicted


def test_containers_are_registered() -> None:
    reg = ContainerRegistry()
    t, _ = table(KeyPair.generate().node_id, registry=reg)
    names = {c.name for c in reg}
    assert {"transport.connections", "transport.clients", "transport.incoming_handshakes", "transport.dials",
            "transport.parked"} <= names
    t.close()
    assert not reg.find("transport.connections")


def test_first_packet_caps() -> None:
    me = KeyPair.generate().node_id
    t, _ = table(me)
    for _ in range(2):
        assert t.refusal_at_first_packet() is None
        t.begin_incoming(Conn(KeyPair.generate().node_id, outbound=False))
    assert t.refusal_at_first_packet() == "max_incoming_handshakes"
    for c in list(t.incoming.keys()):
        t.publish(c, c.peer, "node")
    assert t.refusal_at_first_packet() == "max_connections"
    t.closing = True
    assert t.refusal_at_first_packet() == "shutdown"


def test_max_clients_at_hello_and_after_proof_with_supersede() -> None:
    me = KeyPair.generate().node_id
    t, _ = table(me)
    t.enable_clients(1)
    c1 = Conn(KeyPair.generate().node_id, outbound=False)
    assert t.decide(c1, "hello", c1.peer, "client").verdict == "admit"
    t.publish(c1, c1.peer, "client")
    other = Conn(KeyPair.generate().node_id, outbound=False)
    for stage in ("hello", "proof"):
        d = t.decide(other, stage, other.peer, "client")
        assert (d.verdict, d.code) == ("refuse", "max_clients")
    # the same client again: at the proof its old connection is superseded, freeing its slot
    again = Conn(c1.peer, outbound=False)
    d = t.decide(again, "proof", c1.peer, "client")
    assert d.verdict == "admit" and d.supersede is c1
    assert len(t.peers) == 0  # clients never take mesh slots


def test_duplicate_rule_both_directions() -> None:
    small, large = ids()
    # at the smaller node: an existing connection it dialed beats the larger node's inbound one
    t, _ = table(small)
    mine = Conn(large, outbound=True)
    t.publish(mine, large, "node")
    theirs = Conn(large, outbound=False)
    d = t.decide(theirs, "proof", large, "node")
    assert (d.verdict, d.code, d.survivor) == ("refuse", "duplicate", mine)
    # at the larger node: the smaller node's inbound connection supersedes its own dial
    t2, _ = table(large)
    own = Conn(small, outbound=True)
    t2.publish(own, small, "node")
    inbound = Conn(small, outbound=False)
    d = t2.decide(inbound, "proof", small, "node")
    assert d.verdict == "admit" and d.supersede is own
    # the dialer side: a welcomed dial that loses returns the survivor
    t3, _ = table(large)
    t3.publish(inbound, small, "node")
    dialed = Conn(small, outbound=True)
    d = t3.decide_dialed(dialed, small)
    assert (d.verdict, d.survivor) == ("refuse", inbound)
    # a restarted peer (new instance) wins at once
    fresh = Conn(small, outbound=True, instance=b"new")
    assert t3.decide_dialed(fresh, small).supersede is inbound


def test_a_stale_connection_is_superseded_on_both_sides() -> None:
    """The smaller node's connection went silent (its relay died): the larger node's new dial
    through another relay wins at the listener (the smaller node) and at the dialer alike."""
    small, large = ids()
    t, _ = table(small)  # the listener of the new dial
    old = Conn(large, outbound=True, path="relayed:r1", stale=True)
    t.publish(old, large, "node")
    d = t.decide(Conn(large, outbound=False, path="relayed:r2"), "proof", large, "node")
    assert d.verdict == "admit" and d.supersede is old
    t2, _ = table(large)  # the dialer, welcomed
    old_inbound = Conn(small, outbound=False, path="relayed:r1", stale=True)
    t2.publish(old_inbound, small, "node")
    d = t2.decide_dialed(Conn(small, outbound=True, path="relayed:r2"), small)
    assert d.verdict == "admit" and d.supersede is old_inbound
    # while it is live, the same pair keeps it (the tie-break by dialer)
    t3, _ = table(large)
    live = Conn(small, outbound=False, path="relayed:r1")
    t3.publish(live, small, "node")
    d = t3.decide_dialed(Conn(small, outbound=True, path="relayed:r2"), small)
    assert (d.verdict, d.survivor) == ("refuse", live)


def test_simultaneous_dial_parks_then_resumes() -> None:
    small, large = ids()
    t, _ = table(small)
    own = Conn(large, outbound=True)
    t.begin_dial(own)
    theirs = Conn(large, outbound=False)
    t.begin_incoming(theirs)
    assert t.decide(theirs, "proof", large, "node").verdict == "park"
    t.park(large, theirs)
    # our dial ends (published or failed): the parked attempt is to be decided now
    assert t.release(own, large) == large
    assert t.unpark(large) is theirs
    assert t.decide(theirs, "proof", large, "node").verdict == "admit"


def test_unanswered_own_dial_admits_the_attempt_and_ends_the_dial() -> None:
    """Our dial to the peer has heard nothing (its address unreachable from here): parking the
    peer's verified attempt would hold it silent for our whole handshake timeout, past the idle
    timeout its dialer may run with. It is admitted; our dial is listed to be ended."""
    small, large = ids()
    t, _ = table(small)
    own = Conn(large, outbound=True, in_tls=True)
    t.begin_dial(own)
    theirs = Conn(large, outbound=False)
    t.begin_incoming(theirs)
    d = t.decide(theirs, "proof", large, "node")
    assert (d.verdict, d.redundant) == ("admit", (own,))
    # answered, it parks the attempt as before (and lists nothing to end)
    own.in_tls = False
    assert t.decide(theirs, "proof", large, "node").verdict == "park"


def test_own_relayed_dial_does_not_hold_a_direct_attempt() -> None:
    """A direct attempt wins over our relayed dial whatever the ids: holding it would only
    delay it (and a relayed dial of the larger node holds a relayed attempt of the smaller)."""
    small, large = ids()
    t, _ = table(small)
    t.begin_dial(Conn(large, outbound=True, path="relayed:r1"))
    theirs = Conn(large, outbound=False)
    t.begin_incoming(theirs)
    d = t.decide(theirs, "proof", large, "node")
    assert (d.verdict, d.redundant) == ("admit", ())
    t2, _ = table(large)
    t2.begin_dial(Conn(small, outbound=True))
    relayed = Conn(small, outbound=False, path="relayed:r1")
    t2.begin_incoming(relayed)
    assert t2.decide(relayed, "proof", small, "node").verdict == "park"


def test_release_forgets_everything() -> None:
    me = KeyPair.generate().node_id
    t, _ = table(me)
    c = Conn(KeyPair.generate().node_id, outbound=False)
    t.begin_incoming(c)
    t.publish(c, c.peer, "node")
    t.release(c, c.peer)
    assert (len(t.peers), len(t.incoming), len(t.dialing), len(t.clients)) == (0, 0, 0, 0)


def test_outbound_into_full_pool_evicts_lru() -> None:
    me = KeyPair.generate().node_id
    t, evicted = table(me)
    conns = [Conn(KeyPair.generate().node_id, outbound=True) for _ in range(3)]
    for c in conns:
        t.publish(c, c.peer, "node")
    assert evicted == [conns[0]] and len(t.peers) == 2


# -- the in-memory transport uses the same table -----------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.up: list[Connection] = []
        self.down: list[Connection] = []

    def on_connection(self, conn: Connection) -> None:
        self.up.append(conn)

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        self.down.append(conn)


async def test_memory_transport_clients_roles_and_close_codes() -> None:
    net = MemoryNetwork()
    codec = Codec(ALL_MESSAGES)
    cfg = dataclasses.replace(CFG, max_connections=4)
    gw = MemoryTransport(KeyPair.generate(), "r", cfg, codec, network=net, registry=ContainerRegistry())
    gw.enable_clients(1)
    ev = Events()
    addr = await gw.start(ev)
    c1 = MemoryTransport(KeyPair.generate(), "r", cfg, codec, network=net, role="client")
    c2 = MemoryTransport(KeyPair.generate(), "r", cfg, codec, network=net, role="client")
    await c1.start(Events())
    await c2.start(Events())
    conn = await c1.dial(addr)
    assert conn.role == "node" and ev.up[0].role == "client"
    assert gw.clients() == [ev.up[0]] and gw.connections() == []
    try:
        await c2.dial(addr)
        raise AssertionError("admitted beyond max_clients")
    except AdmissionRefused as exc:
        assert exc.reason == "max_clients"
    assert gw.stats().refused_total == {"max_clients": 1}
    await conn.close("normal")
    assert conn.close_code == "normal" and ev.down[0].close_code == "normal"
    assert gw.clients() == []
    # a client transport accepts nothing
    try:
        await gw.dial(c1.address)
        raise AssertionError("a client accepted a connection")
    except Exception as exc:
        assert "client_only" in str(exc)
    for t in (c1, c2, gw):
        await t.stop()
    await asyncio.sleep(0)
