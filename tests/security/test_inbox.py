"""#11: hostile input from a connected peer never breaks a node's inbox.

Real nodes over QUIC on loopback and an adversarial peer: a :class:`QuicTransport` with its own
key that speaks the wire protocol directly (hand-made frames, raw bytes). Checked:

* frames the codec refuses (a publisher id that is not 32 bytes, a negative epoch or seq, ``hops``
  = 2^64-1, a 400,003-character topic, a negative walk ttl) close only the adversary's connection,
  counted as ``protocol`` refusals; a maximum-size frame that grows when forwarded is dropped and
  counted (``send_errors_total``), never raised; the inbox returns to 0 and its books balance;
  an honest peer's publish still gets through;
* an exception while handling a message is counted, the message dropped, and the third one from
  the same peer closes its connection with ``protocol``;
* one peer's flood of tiny frames cannot fill the shared inbox: it is paused at its share and
  the honest peer's messages all arrive, none dropped;
* at most ``max_preauth_buffer`` bytes of partial frame are held before authentication.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, TransportConfig
from quicmesh.core.guard import gossip_signing_bytes
from quicmesh.core.mesh_messages import MPrune
from quicmesh.core.messages import ALL_MESSAGES, Challenge, Reply
from quicmesh.core.plumtree import batch_digest
from quicmesh.core.wire import HEADER, Codec, Message
from quicmesh.errors import TransportError
from quicmesh.identity import KeyPair
from quicmesh.runtime.memory import MemoryNetwork
from quicmesh.runtime.node import Node
from quicmesh.runtime.quic import QuicConnection, QuicTransport
from quicmesh.runtime.transport import Connection
from quicmesh.testing.wait import eventually

pytestmark = pytest.mark.timeout(120)

REALM = "sec-inbox"
CODEC = Codec(ALL_MESSAGES)


class Recorder:
    """The adversary's transport events."""

    def __init__(self) -> None:
        self.lost: list[Connection] = []

    def on_connection(self, conn: Connection) -> None:
        pass

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def on_connection_lost(self, conn: Connection, error: Exception | None) -> None:
        self.lost.append(conn)


class Adversary:
    """A peer with its own valid key that writes whatever it likes on its connection."""

    def __init__(self, transport: QuicTransport, events: Recorder) -> None:
        self.t = transport
        self.ev = events

    async def connect(self, node: Node) -> QuicConnection:
        conn = await self.t.dial(node.address, expected=node.id)
        assert isinstance(conn, QuicConnection)
        await node.wait_until(lambda: node.transport.get(self.t.node_id) is not None, timeout=10)
        return conn


def raw_frame(fields: dict[str, Any]) -> bytes:
    """A frame whose body is ``fields`` as MessagePack, bypassing every check of the codec."""
    body = msgspec.msgpack.encode(fields)
    return HEADER.pack(len(body)) + body


def gossip(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"t": "m.gossip", "s": "news", "topic": "news.x",
                              "publisher": KeyPair.generate().node_id.raw,
                              "epoch": 1, "seq": 0, "payloads": [b"p"], "hops": 0}
    fields.update(changes)
    return fields


def _closed(conn: Connection) -> Callable[[], bool]:
    return lambda: conn.closed


def _refusals(node: Node, n: int) -> Callable[[], bool]:
    return lambda: node.transport.stats().refused_total.get("protocol", 0) == n


def inbox_balanced(node: Node) -> bool:
    return len(node._inbox) == 0 and node._inbox_in == node._inbox_out and not node.inbox_guard.queued


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    started: list[Node] = []

    async def start(bootstrap: tuple[str, ...] = ()) -> Node:
        cfg = NodeConfig(listen="127.0.0.1:0", realm=REALM, bootstrap=bootstrap)
        node = await Node.start(cfg)
        started.append(node)
        return node

    yield start
    for n in started:
        await n.stop()


@pytest.fixture
async def adversary() -> AsyncIterator[Adversary]:
    t = QuicTransport(KeyPair.generate(), REALM, TransportConfig(), CODEC, registry=ContainerRegistry("adversary"))
    ev = Recorder()
    await t.start(ev)
    yield Adversary(t, ev)
    await t.stop()


async def _honest_publish_arrives(sender: Node, receiver: Node, topic: str) -> None:
    sub = await receiver.subscribe(f"{topic.split('.')[0]}.>")
    await sender.wait_for_subscriber(topic, timeout=10)
    await sender.publish(topic, b"honest")
    msg = await asyncio.wait_for(anext(sub), 10)
    assert msg.payload == b"honest" and msg.sender == sender.id
    await sub.close()


async def test_hostile_frames_cost_only_the_adversarys_connection(
    nodes: Callable[..., Awaitable[Node]], adversary: Adversary
) -> None:
    node = await nodes()
    honest = await nodes((node.address,))
    sub = await node.subscribe("news.>")
    await honest.wait_for_subscriber("news.x", timeout=10)
    hostile = {
        "publisher id of 5 bytes": gossip(publisher=b"short"),
        "negative epoch": gossip(epoch=-1),
        "negative seq": gossip(seq=-5),
        "hops 2^64-1": gossip(hops=2**64 - 1),
        "400,003-character topic": gossip(topic="news." + "x" * 399_998),
        "topic outside its swarm": gossip(topic="other.x"),
        "negative FORWARDJOIN ttl": {"t": "m.fjoin", "s": "", "peer": KeyPair.generate().node_id.raw,
                                     "addrs": [], "ttl": -1},
        "IHAVE with 10,000 ids": {"t": "m.ihave", "s": "news", "ids": [b"i" * 16] * 10_000, "hops": [0] * 10_000},
    }
    refused_before = node.transport.stats().refused_total.get("protocol", 0)
    for i, (what, fields) in enumerate(hostile.items(), 1):
        conn = await adversary.connect(node)
        conn._send_raw(raw_frame(fields))
        await eventually(_closed(conn), timeout=10, what=f"node closes the connection after: {what}")
        await eventually(_refusals(node, refused_before + i), timeout=10)
        await eventually(lambda: node.transport.get(adversary.t.node_id) is None, timeout=10)
    refused = node.transport.stats().refused_total.get("protocol", 0) - refused_before

    # a valid maximum-size frame whose forwarded copy (hops 127 -> 128) is one byte larger
    conn = await adversary.connect(node)
    max_frame = node.config.transport.max_frame_size
    publisher = KeyPair.generate()  # a validly signed batch: only its size is at stake here
    big = gossip(hops=127, payloads=[b"", b""], publisher=publisher.node_id.raw, sig=b"\0" * 64)
    overhead = len(msgspec.msgpack.encode(big))
    half = (max_frame - overhead - 8) // 2
    big["payloads"] = [b"a" * half, b"b" * half]
    while len(msgspec.msgpack.encode(big)) < max_frame:
        big["payloads"][1] += b"b"
    digest = batch_digest(big["publisher"], big["epoch"], big["seq"], big["topic"], big["payloads"])
    big["sig"] = publisher.sign(gossip_signing_bytes(REALM, digest))
    assert len(msgspec.msgpack.encode(big)) == max_frame
    conn._send_raw(raw_frame(big))
    await eventually(lambda: node.send_errors >= 1 or node.mesh.counters.get("too_large_received", 0) >= 1,
                     timeout=10, what="the maximum-size frame is handled")
    await eventually(lambda: inbox_balanced(node), timeout=10)
    assert not conn.closed  # a valid frame costs nothing

    # the node is up, and an honest peer's publish gets through
    await honest.publish("news.x", b"after")
    while True:
        msg = await asyncio.wait_for(anext(sub), 10)
        if msg.payload == b"after":
            break
    print(f"{refused} of {len(hostile)} hostile frames refused at decode (adversary's connection closed each time); "
          f"max-size frame: send_errors_total={node.send_errors}, inbox_errors_total={node.inbox_guard.errors}, "
          f"inbox depth {len(node._inbox)} (in {node._inbox_in} = out {node._inbox_out}); honest publish delivered")
    assert refused == len(hostile)
    assert node.inbox_guard.errors == 0 and inbox_balanced(node)


async def test_handling_errors_are_counted_and_the_offender_closed(
    nodes: Callable[..., Awaitable[Node]], adversary: Adversary, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await nodes()
    honest = await nodes((node.address,))
    real = node.core.message

    def buggy(peer: Any, message: Message, now: float) -> Any:
        if isinstance(message, MPrune) and message.s == "boom":
            raise RuntimeError("a bug triggered by remote input")
        return real(peer, message, now)

    monkeypatch.setattr(node.core, "message", buggy)
    conn = await adversary.connect(node)
    limit = node.config.transport.max_peer_offences
    for _ in range(limit):
        conn.send(MPrune("boom"))
    await eventually(lambda: conn.closed, timeout=10, what="the offender is closed")
    await eventually(lambda: inbox_balanced(node), timeout=10)
    lost = [c for c in node.transport.connections() if c.peer_id == adversary.t.node_id]
    print(f"{node.inbox_guard.errors} of {limit} messages raised while handled: counted and dropped; "
          f"offender closed with {conn.close_code!r}; inbox depth {len(node._inbox)}")
    assert node.inbox_guard.errors == limit and node.inbox_guard.offender_closes == 1 and not lost
    assert conn.close_code == "protocol"
    assert node.gauges()["inbox_errors_total"] == limit
    await _honest_publish_arrives(honest, node, "after.x")


async def test_one_peers_flood_cannot_fill_the_inbox() -> None:
    net = MemoryNetwork()
    node = await Node.start(NodeConfig(listen="mem:0", realm=REALM), network=net)
    cfg = NodeConfig(listen="mem:0", realm=REALM, bootstrap=(node.address,))
    flooder = await Node.start(cfg, network=net)
    honest = await Node.start(cfg, network=net)
    try:
        await flooder.wait_until(lambda: flooder.transport.get(node.id) is not None, timeout=10)
        sub = await node.subscribe("news.>")
        await honest.wait_for_subscriber("news.x", timeout=10)
        conn = flooder.transport.get(node.id)
        assert conn is not None
        flood = 100_000  # > the inbox's 65,536 slots: without fair share the rest would be dropped
        sent = sum(conn.send(MPrune("nobody")) for _ in range(flood))
        n = 200
        for i in range(n):
            await honest.publish("news.x", i.to_bytes(4, "big"))
        got = 0
        while got < n:
            await asyncio.wait_for(anext(sub), 10)
            got += 1
        await eventually(lambda: inbox_balanced(node) and node.mesh.counters["unknown_swarm"] >= sent,
                         timeout=30, what="the flood is processed")
        print(f"flood of {sent:,} tiny frames from one peer: paused {node.inbox_guard.paused_total} times, "
              f"inbox dropped {node.inbox_dropped}; honest peer: {got} of {n} delivered")
        assert node.inbox_guard.paused_total >= 1 and node.inbox_dropped == 0 and got == n
    finally:
        for x in (honest, flooder, node):
            await x.stop()


class PreauthFlooder(QuicConnection):
    """A dialer that, once challenged, sends the start of a 1 MiB frame instead of its proof (it
    names no binding, so the listener challenges it)."""

    def _binding(self) -> bytes:
        return b""

    def _on_handshake_message(self, m: Message) -> None:
        if isinstance(m, Challenge):
            self._send_raw(HEADER.pack((1 << 20) - 8))
            for _ in range(16):
                self._send_raw(b"x" * 8192)
            return
        super()._on_handshake_message(m)


class PreauthDialer(QuicTransport):
    connection_class = PreauthFlooder


async def test_partial_frame_before_authentication_is_bounded(nodes: Callable[..., Awaitable[Node]]) -> None:
    node = await nodes()
    limit = node.config.transport.max_preauth_buffer
    t = PreauthDialer(KeyPair.generate(), REALM, TransportConfig(), CODEC, registry=ContainerRegistry("preauth"))
    await t.start(Recorder())
    try:
        with pytest.raises(TransportError):
            await t.dial(node.address, expected=node.id)
    finally:
        await t.stop()
    refused = node.transport.stats().refused_total.get("protocol", 0)
    print(f"128 KiB of a 1 MiB frame sent before authentication: refused after at most {limit:,} bytes "
          f"(protocol refusals: {refused}); connections held: {node.transport.stats().connections}")
    assert refused == 1 and node.transport.stats().connections == 0


class PausingRecorder(Recorder):
    """Pauses the connection a message arrives on once ``pause_at`` messages arrived."""

    def __init__(self, pause_at: int) -> None:
        super().__init__()
        self.pause_at = pause_at
        self.messages: list[Message] = []
        self.conns: list[Connection] = []

    def on_connection(self, conn: Connection) -> None:
        self.conns.append(conn)

    def on_message(self, conn: Connection, message: Message) -> None:
        self.messages.append(message)
        if len(self.messages) == self.pause_at:
            conn.pause_reading()


async def _quic_pair(receiver_cfg: TransportConfig, events: PausingRecorder) -> tuple[QuicTransport, QuicTransport]:
    rx = QuicTransport(KeyPair.generate(), REALM, receiver_cfg, CODEC, registry=ContainerRegistry("rx"))
    tx = QuicTransport(KeyPair.generate(), REALM, TransportConfig(), CODEC, registry=ContainerRegistry("tx"))
    await rx.start(events)
    await tx.start(Recorder())
    return rx, tx


async def test_quic_paused_connection_holds_then_delivers_in_order() -> None:
    events = PausingRecorder(pause_at=100)
    rx, tx = await _quic_pair(TransportConfig(), events)
    try:
        conn = await tx.dial(rx.address, expected=rx.node_id)
        n = 3_000
        for i in range(n):
            assert conn.send(MPrune(f"s{i}"))
        await eventually(lambda: conn.pending_bytes == 0, timeout=10, what="everything sent")
        rconn = events.conns[0]
        assert isinstance(rconn, QuicConnection)
        await eventually(lambda: len(rconn._held) + len(rconn._undelivered or ()) > 0, timeout=10)
        waiting = len(events.messages)
        held = len(rconn._held)
        rconn.resume_reading()
        await eventually(lambda: len(events.messages) == n, timeout=10)
        in_order = [m.s for m in events.messages if isinstance(m, MPrune)] == [f"s{i}" for i in range(n)]
        print(f"paused at 100 messages: {waiting} delivered, {held:,} bytes held unread; "
              f"after resume {len(events.messages)} of {n} delivered, in order: {in_order}")
        assert waiting < n and in_order
    finally:
        await tx.stop()
        await rx.stop()


async def test_quic_paused_connection_held_bytes_are_capped() -> None:
    events = PausingRecorder(pause_at=1)
    cap = 64 * 1024
    rx, tx = await _quic_pair(TransportConfig(max_paused_bytes=cap), events)
    try:
        conn = await tx.dial(rx.address, expected=rx.node_id)
        sent = 0
        for i in range(400):
            sent += conn.send(Reply(id=i, payload=b"x" * 1000))
        await eventually(lambda: conn.closed, timeout=10, what="the receiver closes the flooding connection")
        rconn = events.conns[0]
        print(f"{sent} frames of ~1 KiB sent to a paused connection: closed with {rconn.close_code!r} "
              f"after holding at most {cap:,} bytes; delivered {len(events.messages)}")
        assert rconn.close_code == "slow_consumer" and len(events.messages) < 400
    finally:
        await tx.stop()
        await rx.stop()
