"""Forged senders: a gossip batch whose origin signature does not verify is never delivered or
forwarded, and a peer that keeps relaying such batches is disconnected and blocked.

Adversary: hand-made ``MGossip`` batches naming an honest member as their publisher, injected
into a simulated overlay of real node cores (``Simulator.receive``: exactly what the node's
inbox hands its core), in five kinds: a random signature, a signature by the forger's own key,
the publisher's genuine signature of another batch, no signature (an old node's batch) and the
publisher's signature made for another realm.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.core.effects import Deliver, DeliverBatch, Disconnect, Send
from quicmesh.core.guard import OFFENCE_LIMIT, gossip_signing_bytes
from quicmesh.core.mesh_messages import MGossip
from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.plumtree import batch_digest
from quicmesh.core.wire import Codec, Message
from quicmesh.errors import ConnectionLost
from quicmesh.identity import KeyPair, NodeId
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic import QuicTransport
from quicmesh.runtime.transport import Connection
from quicmesh.testing.network import Latency, NetworkParams
from quicmesh.testing.report import build_overlay
from quicmesh.testing.sim import SimNode, Simulator
from quicmesh.testing.wait import eventually

TOPIC = "a.x"


def _overlay(seed: int, count: int = 8) -> tuple[Simulator, list[SimNode]]:
    sim = Simulator(seed, NodeConfig(), NetworkParams(latency=Latency(median=0.01)))
    nodes = build_overlay(sim, count)
    sim.run_for(3.0)
    for n in nodes:
        sim.subscribe(n, "a.>")
    sim.run_for(5.0)
    return sim, nodes


def _forged(i: int, victim: KeyPair, forger: KeyPair) -> MGossip:
    """Forgery ``i`` (of five kinds) naming ``victim`` as publisher."""
    epoch, seq = 4242, i
    payloads = [f"forged-{i}".encode()]
    digest = batch_digest(victim.node_id.raw, epoch, seq, TOPIC, payloads)
    kind = i % 5
    if kind == 0:
        sig = hashlib.sha512(b"random" + i.to_bytes(4, "big")).digest()
    elif kind == 1:
        sig = forger.sign(gossip_signing_bytes("default", digest))
    elif kind == 2:
        other = batch_digest(victim.node_id.raw, epoch, seq, TOPIC, [b"genuine"])
        sig = victim.sign(gossip_signing_bytes("default", other))
    elif kind == 3:
        sig = b""
    else:
        sig = victim.sign(gossip_signing_bytes("another-realm", digest))
    return MGossip("a", TOPIC, victim.node_id.raw, epoch, seq, payloads, 0, sig, None)


def _forged_payloads(out: list[object]) -> tuple[int, int]:
    delivered = sum(1 for e in out if isinstance(e, Deliver | DeliverBatch) and b"forged" in bytes(
        e.payload if isinstance(e, Deliver) else b"".join(e.payloads)))
    forwarded = sum(1 for e in out if isinstance(e, Send) and isinstance(e.message, MGossip))
    return delivered, forwarded


def test_no_forged_sender_message_is_delivered_or_forwarded() -> None:
    sim, nodes = _overlay(11)
    victim = nodes[3]
    victim_key = victim.core.services._key  # the simulated node's own key: genuine signatures
    forger = KeyPair.from_seed(b"\x66" * 32)
    target = nodes[5]
    delivered = forwarded = 0
    for i in range(1000):
        sender = NodeId(hashlib.sha256(b"relay" + i.to_bytes(4, "big")).digest())  # a fresh relay each time
        d, f = _forged_payloads(sim.receive(target, sender, _forged(i, victim_key, forger)))
        delivered += d
        forwarded += f
    sim.run_for(3.0)
    delivered += sum(1 for n in nodes for d in n.deliveries if d.payload.startswith(b"forged"))
    # the same pipeline delivers a genuine message of the victim to every member
    sim.publish(victim, TOPIC, b"genuine-1")
    sim.run_for(3.0)
    reached = sum(1 for n in nodes if any(d.payload == b"genuine-1" for d in n.deliveries))
    g = target.core.guard.counters
    rejected = g["gossip_bad_signature"] + g["gossip_malformed"]
    print(f"\n{delivered} of 1,000 forged-sender messages delivered, {forwarded} forwarded; "
          f"{rejected} rejected by signature; genuine message reached {reached} of {len(nodes)} nodes")
    assert delivered == 0 and forwarded == 0
    assert rejected == 1000
    assert reached == len(nodes)
    honest_offences = sum(n.core.guard.counters["offences"] for n in nodes if n is not target)
    assert honest_offences == 0  # honest relays of genuine batches are never penalised


def test_a_forger_is_disconnected_after_repeated_offences_and_stays_blocked() -> None:
    sim, nodes = _overlay(12)
    forger, target = nodes[0], nodes[4]
    victim_key = nodes[2].core.services._key
    if frozenset((forger.index, target.index)) not in sim.conns:  # make sure they are connected
        sim._dial(target, forger, (forger.address,), by_address=False)
        sim.run_for(1.0)
    assert frozenset((forger.index, target.index)) in sim.conns
    disconnected_after = None
    for i in range(1, 10):
        out = sim.receive(target, forger.id, _forged(i, victim_key, KeyPair.from_seed(b"\x67" * 32)))
        if any(isinstance(e, Disconnect) and e.peer == forger.id for e in out):
            disconnected_after = i
            break
    print(f"\nforger disconnected after {disconnected_after} forged batches (limit {OFFENCE_LIMIT})")
    assert disconnected_after == OFFENCE_LIMIT
    assert target.core.blocked(forger.id, sim.now)
    sim.run_for(10.0)  # the forger (an overlay neighbour) tries to come back: refused while blocked
    assert frozenset((forger.index, target.index)) not in sim.conns
    assert target.core.guard.counters["peers_blocked"] == 1
    # messages from it are ignored even if one slips in before its connection closes
    sim.publish(forger, TOPIC, b"after-block")
    sim.run_for(3.0)
    others = [n for n in nodes if n is not forger and n is not target]
    assert all(any(d.payload == b"after-block" for d in n.deliveries) for n in others)  # genuine: relayed by others


# -- over real QUIC: an adversarial peer speaking the wire protocol directly --------------------------


@pytest.mark.timeout(90)
async def test_over_quic_forged_batches_reach_no_one_and_the_forger_is_cut_off() -> None:
    fast = TransportConfig(handshake_timeout=5.0, idle_timeout=5.0, keepalive_interval=1.0)
    recv = await Node.start(NodeConfig(realm="forge", transport=fast))
    victim = await Node.start(NodeConfig(realm="forge", transport=fast, bootstrap=(recv.address,)))
    honest = await Node.start(NodeConfig(realm="forge", transport=fast, bootstrap=(recv.address,)))
    registry = ContainerRegistry("forger")
    forger = QuicTransport(KeyPair.generate(), "forge", fast, Codec(ALL_MESSAGES), registry=registry)
    lost: list[Exception | None] = []
    events = _Events(lost)
    await forger.start(events)
    subs = [await n.subscribe("a.>") for n in (recv, victim, honest)]
    try:
        await victim.wait_for_subscriber(TOPIC, 10)
        await eventually(lambda: recv.mesh.swarm_neighbours(TOPIC) >= 2, timeout=10)
        conn = await forger.dial(recv.address, expected=recv.id)
        victim_key = victim.core.services._key
        fkey = KeyPair.generate()
        sent = 0
        for i in range(1000):
            if not conn.send(_forged(i, victim_key, fkey)):
                break
            sent += 1
        await eventually(lambda: bool(lost), timeout=10)  # the receiver closed the forger's connection
        await victim.publish(TOPIC, b"genuine")  # a sentinel: everything before it has been handled
        got: list[list[bytes]] = []
        for sub in subs[:1] + subs[2:]:
            seen: list[bytes] = []
            while not seen or seen[-1] != b"genuine":
                seen.append((await asyncio.wait_for(sub.__anext__(), 10)).payload)
            got.append(seen)
        delivered = sum(1 for seen in got for p in seen if p.startswith(b"forged"))
        g = recv.core.guard.counters
        print(f"\nover QUIC: {delivered} of 1,000 forged-sender messages delivered or forwarded "
              f"({sent} queued by the forger, {g['offences']} checked before it was cut off); "
              f"forger blocked: {recv.core.guard.stats()['blocked'] == 1}")
        assert delivered == 0
        assert g["offences"] == OFFENCE_LIMIT and g["peers_blocked"] == 1
        assert recv.core.guard.stats()["blocked"] == 1
        # it comes back: refused while blocked (the refusal may close the connection before the
        # dial returns or just after it: on loopback either comes first)
        lost.clear()
        try:
            again = await forger.dial(recv.address, expected=recv.id)
        except ConnectionLost as exc:
            assert "blocked" in str(exc), exc
        else:
            await eventually(lambda: bool(lost), timeout=10)
            assert again.closed
    finally:
        for sub in subs:
            await sub.close()
        await forger.stop()
        for n in (honest, victim, recv):
            await n.stop()


class _Events:
    def __init__(self, lost: list[Exception | None]) -> None:
        self.lost = lost

    def on_connection(self, conn: Connection) -> None:
        pass

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        self.lost.append(error)
