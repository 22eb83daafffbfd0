"""The Node API over the in-memory transport: pub/sub, RPC, and the bounds on both paths."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from containers import static_sizes

import quicmesh
from quicmesh.config import NodeConfig, PubSubConfig, RpcConfig
from quicmesh.errors import (
    CallTimeout,
    ConnectionLost,
    InvalidTopic,
    MessageTooLarge,
    NodeClosed,
    NoProvider,
    Overloaded,
    PeerIdMismatch,
    RealmMismatch,
    RemoteError,
)
from quicmesh.identity import KeyPair
from quicmesh.runtime.memory import MemoryNetwork
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually


@pytest.fixture
def net() -> MemoryNetwork:
    return MemoryNetwork()


@pytest.fixture
async def pair(net: MemoryNetwork) -> AsyncIterator[tuple[Node, Node]]:
    a = await Node.start(NodeConfig(realm="t"), network=net)
    b = await Node.start(NodeConfig(realm="t", bootstrap=(a.address,)), network=net)
    await eventually(lambda: a.peers() and b.peers(), interval=0)
    yield a, b
    await b.stop()
    await a.stop()


async def test_publish_reaches_direct_subscriber_in_order(pair: tuple[Node, Node]) -> None:
    a, b = pair
    sub = await a.subscribe("sensors.temp")
    await b.wait_for_subscriber("sensors.temp", timeout=5)
    for i in range(1000):
        await b.publish("sensors.temp", str(i).encode())
    got = [await sub.get() for _ in range(1000)]
    assert [m.payload for m in got] == [str(i).encode() for i in range(1000)]
    assert all(m.sender == b.id and m.topic == "sensors.temp" for m in got)
    assert [m.seq for m in got] == sorted(m.seq for m in got)
    await sub.close()


async def test_a_burst_travels_in_batches_and_a_lone_publish_leaves_at_once(pair: tuple[Node, Node]) -> None:
    a, b = pair
    sub = await a.subscribe("burst.>")
    await b.wait_for_subscriber("burst.x", timeout=5)

    def batches_sent() -> int:
        return int(b.mesh.stats()["swarms"]["burst"]["payloads_sent"])

    # 1,000 publishes without yielding to the loop: batches of gossip.batch_max_messages
    per_batch = b.config.gossip.batch_max_messages
    for i in range(1000):
        await b.publish("burst.x", b"%d" % i)
    got = [await sub.get() for _ in range(1000)]
    assert [m.payload for m in got] == [b"%d" % i for i in range(1000)]
    assert [m.seq for m in got] == list(range(got[0].seq, got[0].seq + 1000))  # one per message
    assert batches_sent() == -(-1000 // per_batch)  # ceil(1000 / per_batch)
    # a lone publish is flushed at the end of its loop iteration, not held for company
    before = batches_sent()
    await b.publish("burst.y", b"alone")
    assert (await asyncio.wait_for(sub.get(), 1.0)).payload == b"alone"
    assert batches_sent() == before + 1
    # another topic of the same swarm closes the open batch: order across topics is kept
    await b.publish("burst.x", b"1")
    await b.publish("burst.y", b"2")
    await b.publish("burst.x", b"3")
    assert [(m.topic, m.payload) for m in [await sub.get() for _ in range(3)]] == \
        [("burst.x", b"1"), ("burst.y", b"2"), ("burst.x", b"3")]
    assert batches_sent() == before + 4
    await sub.close()


async def test_stop_sends_what_was_published_in_its_loop_iteration(net: MemoryNetwork) -> None:
    a = await Node.start(NodeConfig(realm="t"), network=net)
    b = await Node.start(NodeConfig(realm="t", bootstrap=(a.address,)), network=net)
    try:
        sub = await a.subscribe("last.words")
        await b.wait_for_subscriber("last.words", timeout=5)
        await b.publish("last.words", b"bye")
        await b.stop()  # no yield between the publish and the stop
        assert (await asyncio.wait_for(sub.get(), 2.0)).payload == b"bye"
    finally:
        await b.stop()
        await a.stop()


async def test_message_received_just_before_its_connection_closed_is_delivered(
    net: MemoryNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer publishes and stops at once: its last frames and the close can reach the receiver
    in one loop iteration. The frames are processed first, the loss after them."""
    a = await Node.start(NodeConfig(realm="t"), network=net)
    b = await Node.start(NodeConfig(realm="t", bootstrap=(a.address,)), network=net)
    try:
        sub = await a.subscribe("last.words")
        await b.wait_for_subscriber("last.words", timeout=5)
        held: list[tuple[str, Any, Any]] = []
        on_message, on_lost = a.on_message, a.on_connection_lost
        monkeypatch.setattr(a, "on_message", lambda conn, msg: held.append(("message", conn, msg)))
        monkeypatch.setattr(a, "on_connection_lost", lambda conn, err: held.append(("lost", conn, err)))
        await b.publish("last.words", b"bye")
        await b.stop()
        await eventually(lambda: any(kind == "lost" for kind, _, _ in held), interval=0)
        monkeypatch.undo()  # the node's own handlers again
        assert [kind for kind, _, _ in held][-1] == "lost" and len(held) >= 2
        for kind, conn, arg in held:  # everything in one loop iteration, the close last
            (on_message if kind == "message" else on_lost)(conn, arg)
        assert (await asyncio.wait_for(sub.get(), 2.0)).payload == b"bye"
        await eventually(lambda: not a.peers(), interval=0)  # and the loss was handled after it
        assert not a._lost_later
    finally:
        await b.stop()
        await a.stop()


async def test_publish_short_path_keeps_every_rule(pair: tuple[Node, Node]) -> None:
    """A publish to the topic of the open batch skips the clock and the topic check; what the
    general path enforces still holds around it."""
    a, b = pair
    sub = await a.subscribe("hot.>")
    await b.wait_for_subscriber("hot.x", timeout=5)
    await b.publish("hot.x", b"0")
    assert b.mesh._hot is not None  # a batch is open: the next publishes take the short path
    # publish is typed for bytes; it also takes a bytearray (copied): passed on purpose here
    pending = b.publish("hot.x", bytearray(b"1"))  # type: ignore[arg-type]
    assert isinstance(pending, asyncio.Future) and pending.done()  # the message was taken at the call
    await pending
    # a local subscription opened while the batch is open gets the next message
    local = await b.subscribe("hot.x")
    await b.publish("hot.x", b"2")
    assert (await asyncio.wait_for(local.get(), 1.0)).payload == b"2"
    # bad input is refused whatever batch is open
    with pytest.raises(InvalidTopic):
        b.publish("$registry.x", b"no")
    with pytest.raises(InvalidTopic):
        b.publish("hot..x", b"no")
    with pytest.raises(MessageTooLarge):
        b.publish("hot.x", b"x" * (b.config.pubsub.max_message_size + 1))
    with pytest.raises(TypeError):
        b.publish("hot.x", "text")  # type: ignore[arg-type]
    got = [await asyncio.wait_for(sub.get(), 2.0) for _ in range(3)]
    assert [m.payload for m in got] == [b"0", b"1", b"2"]
    assert [m.seq for m in got] == [got[0].seq, got[0].seq + 1, got[0].seq + 2]
    assert b.mesh.counters["published"] == 3
    await local.close()
    await sub.close()
    await b.stop()
    with pytest.raises(NodeClosed):
        b.publish("hot.x", b"late")


async def test_wildcards_and_local_delivery(pair: tuple[Node, Node]) -> None:
    a, b = pair
    one = await a.subscribe("sensors.*")
    rest = await a.subscribe("sensors.>")
    local = await b.subscribe("sensors.temp")
    await b.wait_for_subscriber("sensors.temp", timeout=5)
    await b.publish("sensors.temp", b"1")
    await b.publish("sensors.temp.room1", b"2")
    await b.publish("other", b"3")  # nobody subscribes: not an error
    assert (await one.get()).payload == b"1"
    assert [(await rest.get()).payload for _ in range(2)] == [b"1", b"2"]
    assert (await local.get()).payload == b"1"
    await asyncio.sleep(0)
    assert one.pending == 0 and rest.pending == 0


async def test_message_too_large_is_typed(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    with pytest.raises(MessageTooLarge):
        await a.publish("t", b"x" * (a.config.pubsub.max_message_size + 1))


async def test_slow_subscriber_never_stalls_others(net: MemoryNetwork) -> None:
    cfg = NodeConfig(realm="t", pubsub=PubSubConfig(subscriber_queue_size=16))
    a = await Node.start(cfg, network=net)
    b = await Node.start(cfg.replace(bootstrap=(a.address,)), network=net)
    await eventually(lambda: a.peers(), interval=0)
    stuck = await a.subscribe("x")  # never read
    fast = await a.subscribe("x")
    await b.wait_for_subscriber("x", timeout=5)
    got: list[bytes] = []

    async def reader() -> None:
        async for m in fast:
            got.append(m.payload)
            if len(got) == 200:
                return

    task = asyncio.create_task(reader())
    for i in range(200):
        await b.publish("x", b"%d" % i)
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    assert got == [b"%d" % i for i in range(200)]
    assert stuck.pending == 16
    assert stuck.dropped == 200 - 16
    await b.stop()
    await a.stop()


async def test_drain_waits_for_a_paused_receiver_and_for_the_close(net: MemoryNetwork) -> None:
    """The in-memory connection's ``drain`` waits as QUIC's does: while its receiver is paused,
    until the queue falls to low water (``publish`` back-pressure rests on it: without it a fast
    publisher dropped frames at its send buffer once ``asyncio.wait_for`` stopped yielding,
    Python 3.12); ``until=0`` waits for every byte; a close ends the wait."""
    from quicmesh.config import TransportConfig
    from quicmesh.core.messages import Ping

    cfg = NodeConfig(realm="t", transport=TransportConfig(send_buffer_bytes=64 * 1024))
    a = await Node.start(cfg, network=net)
    b = await Node.start(cfg.replace(bootstrap=(a.address,)), network=net)
    try:
        await eventually(lambda: a.peers() and b.peers(), interval=0)
        sender, receiver = b.transport.get(a.id), a.transport.get(b.id)
        assert sender is not None and receiver is not None
        receiver.pause_reading()
        sent = 0
        while sender.pending_bytes <= 48 * 1024:
            assert sender.send(Ping(seq=sent))
            sent += 1
        held = asyncio.ensure_future(sender.drain())
        everything = asyncio.ensure_future(sender.drain(until=0))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not held.done() and not everything.done()  # nothing moves while the receiver is paused
        receiver.resume_reading()
        await asyncio.wait_for(held, 5)
        assert sender.pending_bytes <= 16 * 1024
        await asyncio.wait_for(everything, 5)
        assert sender.pending_bytes == 0
        receiver.pause_reading()
        while sender.pending_bytes <= 48 * 1024:
            assert sender.send(Ping(seq=sent))
            sent += 1
        waiting = asyncio.ensure_future(sender.drain())
        await asyncio.sleep(0)
        assert not waiting.done()
        await sender.close()
        await asyncio.wait_for(waiting, 5)  # the close ends the wait
    finally:
        await b.stop()
        await a.stop()


async def test_subscribe_close_cycles_return_to_baseline(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    baseline = static_sizes(a.registry)
    for i in range(10_000):
        sub = await a.subscribe(f"topic.{i % 50}")
        await sub.close()
    await asyncio.sleep(0)
    assert static_sizes(a.registry) == baseline
    assert a.subscribed_patterns() == frozenset()
    assert a.topic_state("topic") == 0  # the last unsubscribe left the swarm and freed its state


async def test_garbage_collected_subscription_is_released(pair: tuple[Node, Node]) -> None:
    a, b = pair
    sub = await a.subscribe("gc.topic")
    await b.wait_for_subscriber("gc.topic", timeout=5)
    assert a.topic_state("gc.topic") > 0
    del sub
    gc.collect()
    await eventually(lambda: len(a._subs) == 0, interval=0)
    await eventually(lambda: a.topic_state("gc.topic") == 0, interval=0)
    await b.publish("gc.topic", b"nobody")  # must not fail


async def test_call_round_trip_and_errors(pair: tuple[Node, Node]) -> None:
    a, b = pair

    async def add(payload: bytes) -> bytes:
        x, y = payload.split(b"+")
        return str(int(x) + int(y)).encode()

    async def boom(payload: bytes) -> bytes:
        raise KeyError("secret internals")

    async def typed(payload: bytes) -> bytes:
        raise RemoteError("bad_input", "try again later")

    await a.advertise("math.add", add)
    await a.advertise("boom", boom)
    await a.advertise("typed", typed)
    await eventually(lambda: len(b.services.providers("typed", b._now())) == 1, interval=0)
    assert await b.call("math.add", b"2+3") == b"5"
    with pytest.raises(RemoteError) as exc:
        await b.call("boom", b"")
    assert exc.value.code == "handler_error" and "Traceback" not in exc.value.message
    with pytest.raises(RemoteError) as exc2:
        await b.call("typed", b"")
    assert (exc2.value.code, exc2.value.message) == ("bad_input", "try again later")
    with pytest.raises(NoProvider):
        await b.call("nobody.offers.this", b"")
    assert b.pending_calls == 0


async def test_timeout_and_cancellation_leave_no_pending_entry(pair: tuple[Node, Node]) -> None:
    a, b = pair
    release = asyncio.Event()

    async def slow(payload: bytes) -> bytes:
        await release.wait()
        return b"late"

    await a.advertise("slow", slow)
    await eventually(lambda: b.services.providers("slow", b._now()), interval=0)
    with pytest.raises(CallTimeout):
        await b.call("slow", b"", timeout=0.05)
    assert b.pending_calls == 0
    tasks = [asyncio.create_task(b.call("slow", b"", timeout=30)) for _ in range(1000)]
    await eventually(lambda: b.pending_calls == 1000 or a.rpc.running == a.config.rpc.max_concurrent_handlers,
                     interval=0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert b.pending_calls == 0
    assert all(v == 0 for v in b.caller.pending_entries().values()), b.caller.pending_entries()
    assert b.caller.next_deadline() is None
    release.set()


async def test_pending_call_cap_raises_overloaded(net: MemoryNetwork) -> None:
    a = await Node.start(NodeConfig(realm="t"), network=net)
    cfg = NodeConfig(realm="t", bootstrap=(a.address,), rpc=RpcConfig(max_pending_calls=10))
    b = await Node.start(cfg, network=net)
    never = asyncio.Event()

    async def hang(payload: bytes) -> bytes:
        await never.wait()
        return b""

    await a.advertise("hang", hang)
    await eventually(lambda: b.services.providers("hang", b._now()), interval=0)
    tasks = [asyncio.create_task(b.call("hang", b"", timeout=30)) for _ in range(10)]
    await eventually(lambda: b.pending_calls == 10, interval=0)
    with pytest.raises(Overloaded):
        await b.call("hang", b"")
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert b.pending_calls == 0
    await b.stop()
    await a.stop()


async def test_callee_handler_cap_answers_overloaded(net: MemoryNetwork) -> None:
    a = await Node.start(NodeConfig(realm="t", rpc=RpcConfig(max_concurrent_handlers=4)), network=net)
    b = await Node.start(NodeConfig(realm="t", bootstrap=(a.address,)), network=net)
    gate = asyncio.Event()

    async def gated(payload: bytes) -> bytes:
        await gate.wait()
        return b"ok"

    await a.advertise("gated", gated)
    await eventually(lambda: b.services.providers("gated", b._now()), interval=0)
    tasks = [asyncio.create_task(b.call("gated", b"", timeout=10)) for _ in range(4)]
    await eventually(lambda: a.rpc.running == 4, interval=0)
    with pytest.raises(Overloaded):
        await b.call("gated", b"", timeout=10)
    gate.set()
    assert await asyncio.gather(*tasks) == [b"ok"] * 4
    await b.stop()
    await a.stop()


async def test_callee_crash_fails_every_caller_and_empties_table(net: MemoryNetwork) -> None:
    a = await Node.start(NodeConfig(realm="t"), network=net)
    b = await Node.start(NodeConfig(realm="t", bootstrap=(a.address,)), network=net)
    never = asyncio.Event()

    async def hang(payload: bytes) -> bytes:
        await never.wait()
        return b""

    await a.advertise("hang", hang)
    await eventually(lambda: b.services.providers("hang", b._now()), interval=0)
    tasks = [asyncio.create_task(b.call("hang", b"", timeout=5)) for _ in range(100)]
    await eventually(lambda: b.pending_calls == 100, interval=0)
    assert isinstance(a.transport, quicmesh.runtime.memory.MemoryTransport)
    await a.transport.crash()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    # the only provider is gone: each call fails over, finds no one left, and says so
    assert all(isinstance(r, NoProvider) and isinstance(r.__cause__, ConnectionLost) for r in results), results[:3]
    assert b.pending_calls == 0
    await b.stop()
    await a.stop()


async def test_failover_to_second_provider_on_overload(net: MemoryNetwork) -> None:
    p1 = await Node.start(NodeConfig(realm="t", rpc=RpcConfig(max_concurrent_handlers=1)), network=net)
    p2 = await Node.start(NodeConfig(realm="t"), network=net)
    caller = await Node.start(NodeConfig(realm="t", bootstrap=(p1.address, p2.address)), network=net)
    gate = asyncio.Event()

    async def block(payload: bytes) -> bytes:
        await gate.wait()
        return b"unblocked"

    async def h1(payload: bytes) -> bytes:
        return b"p1"

    async def h2(payload: bytes) -> bytes:
        return b"p2"

    await p1.advertise("block", block)
    await p1.advertise("svc", h1)
    await p2.advertise("svc", h2)
    await eventually(lambda: len(caller.services.providers("svc", caller._now())) == 2, interval=0)
    await eventually(lambda: bool(caller.services.providers("block", caller._now())), interval=0)
    occupy = asyncio.create_task(caller.call("block", b"", timeout=10))  # p1's only handler slot
    await eventually(lambda: p1.rpc.running == 1, interval=0)
    results = {await caller.call("svc", b"") for _ in range(20)}
    assert results == {b"p2"}  # p1 answers Overloaded every time: each call fails over to p2
    gate.set()
    assert await occupy == b"unblocked"
    assert await caller.call("svc", b"") in (b"p1", b"p2")
    for n in (caller, p2, p1):
        await n.stop()


async def test_realm_and_identity_checks(net: MemoryNetwork) -> None:
    a = await Node.start(NodeConfig(realm="a"), network=net)
    b = await Node.start(NodeConfig(realm="b"), network=net)
    with pytest.raises(RealmMismatch):
        await b.connect(a.address)
    assert a.peers() == [] and b.peers() == []
    c = await Node.start(NodeConfig(realm="a"), network=net)
    with pytest.raises(PeerIdMismatch):
        await c.connect(a.address, expected=KeyPair.generate().node_id)
    assert await c.connect(a.address, expected=a.id) == a.id
    for n in (a, b, c):
        await n.stop()


async def test_stop_ends_subscriptions_and_calls(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    sub = await a.subscribe("x")
    reader = asyncio.create_task(anext(sub, None))
    await asyncio.sleep(0)
    await a.stop()
    assert await asyncio.wait_for(reader, 2) is None


async def test_a_node_calls_its_own_procedure_locally(pair: tuple[Node, Node]) -> None:
    a, _ = pair

    async def echo(payload: bytes) -> bytes:
        return payload[::-1]

    async def broken(payload: bytes) -> bytes:
        raise ValueError("no")

    await a.advertise("local.echo", echo)
    await a.advertise("local.broken", broken)
    assert await a.call("local.echo", b"abc") == b"cba"
    with pytest.raises(RemoteError) as exc:
        await a.call("local.broken", b"")
    assert exc.value.code == "handler_error"
    assert a.pending_calls == 0
