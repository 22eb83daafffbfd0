"""No silent loss (#14): between the network and a subscription nothing drops; only a
subscription's own queue may, by its policy, counted in ``sub.dropped``.

A publisher floods one topic; the subscriber's reader is slow but alive. With policy ``block``
every message arrives (the node stops reading the connection and ``publish()`` waits); with
``drop_oldest`` the losses are exactly the subscription's ``dropped``; a dead reader of a
``block`` subscription holds the node for at most ``subscriber_block_timeout``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from quicmesh.config import NodeConfig
from quicmesh.runtime.memory import MemoryNetwork
from quicmesh.runtime.node import Node
from quicmesh.runtime.subscription import Subscription
from quicmesh.testing.wait import eventually

N = 20_000
PAYLOAD = b"x" * 56


def _config(overflow: str, bootstrap: tuple[str, ...] = (), pubsub: dict[str, float] | None = None) -> NodeConfig:
    return NodeConfig(realm="loss", bootstrap=bootstrap, discovery={"local": False},  # type: ignore[arg-type]
                      pubsub={"subscriber_overflow": overflow, "subscriber_queue_size": 256, **(pubsub or {})})  # type: ignore[arg-type]


async def _pair(overflow: str, quic: bool, **pubsub: float) -> tuple[Node, Node]:
    net = None if quic else MemoryNetwork()
    a = await Node.start(_config(overflow, (), pubsub), network=net)
    b = await Node.start(_config(overflow, (a.address,), pubsub), network=net)
    await eventually(lambda: bool(a.peers() and b.peers()), timeout=20)
    return a, b


async def _publish(node: Node, topic: str, n: int, payload: bytes = PAYLOAD) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await node.publish(topic, payload + i.to_bytes(8, "big"))
    return time.perf_counter() - t0


async def _slow_reader(sub: Subscription, n: int, every: int = 64, pause: float = 0.002) -> list[int]:
    got: list[int] = []
    async for msg in sub:
        got.append(int.from_bytes(msg.payload[-8:], "big"))
        if len(got) % every == 0:
            await asyncio.sleep(pause)  # slow, but alive
        if len(got) == n:
            break
    return got


async def flood_block(quic: bool, size: int) -> None:
    """Flood a ``block`` subscription with a slow reader; assert that nothing was lost."""
    a, b = await _pair("block", quic)
    try:
        await _flood_block(a, b, size)
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.parametrize("size", [64, 1024])
@pytest.mark.parametrize("transport", ["memory", "quic"])
async def test_block_policy_loses_nothing_with_a_slow_reader(transport: str, size: int) -> None:
    await flood_block(transport == "quic", size)


@pytest.mark.parametrize("size", [64, 1024])
def test_block_policy_loses_nothing_under_uvloop(size: int) -> None:
    import uvloop  # the dev extra installs it

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(flood_block(True, size))
        assert "uvloop" in type(runner.get_loop()).__module__


async def _flood_block(a: Node, b: Node, size: int) -> None:
    n = N if size == 64 else N // 2  # 1 KiB: 10 MB, past the publisher's 8 MiB send buffer
    sub = await a.subscribe("flood.block")
    await b.wait_for_subscriber("flood.block", timeout=10)
    t0 = time.perf_counter()
    reader = asyncio.ensure_future(_slow_reader(sub, n))
    seconds = await _publish(b, "flood.block", n, b"x" * (size - 8))
    got = await asyncio.wait_for(reader, 60)
    read_s = time.perf_counter() - t0
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    print(f"\n{loop}, {type(a.transport).__name__}, {size} B: {n:,} published in {seconds:.2f}s "
          f"to a reader done in {read_s:.2f}s: {len(got):,} received, "
          f"{n - len(got)} lost, sub.dropped={sub.dropped}, delivery_dropped={a.outbox_dropped}, "
          f"inbox_dropped={a.inbox_dropped}, publisher dropped_sends={b.dropped_sends}, delivery stalls="
          f"{a.delivery.stalls}, inbox holds={a.inbox_guard.held_total}, "
          f"connections paused={a.inbox_guard.paused_total}")
    assert got == list(range(n))
    assert sub.dropped == 0 and a.outbox_dropped == 0 and a.inbox_dropped == 0 and b.dropped_sends == 0
    assert a.delivery.stalls > 0  # the reader was slower: the back-pressure engaged
    assert a.delivery.block_timeouts == 0
    await sub.close()


async def test_quic_reading_is_held_not_dropped_for_a_long_slow_read() -> None:
    """40 MB at 1 KiB to a reader ~4x slower than the publisher: the subscriber's node stops
    reading datagrams (QUIC flow then waits at the publisher) instead of buffering or closing."""
    a, b = await _pair("block", quic=True)
    try:
        n = 40_000
        sub = await a.subscribe("flood.long")
        await b.wait_for_subscriber("flood.long", timeout=10)
        conn = a.transport.get(b.id)
        assert conn is not None
        reader = asyncio.ensure_future(_slow_reader(sub, n, every=64, pause=0.004))
        seconds = await _publish(b, "flood.long", n, b"x" * 1016)
        got = await asyncio.wait_for(reader, 120)
        proto = conn._proto  # type: ignore[attr-defined]
        print(f"\nQUIC 1 KiB x {n:,}: published in {seconds:.1f}s, {len(got):,} received, sub.dropped={sub.dropped}, "
              f"reading held {proto.holds} times, datagrams shed {proto.datagrams_shed}, "
              f"publisher dropped_sends={b.dropped_sends}")
        assert got == list(range(n)) and sub.dropped == 0 and b.dropped_sends == 0
        assert proto.holds > 0 and a.transport.get(b.id) is conn  # held, and the same connection throughout
    finally:
        await b.stop()
        await a.stop()


async def test_local_publisher_waits_for_a_slow_local_reader() -> None:
    a = await Node.start(_config("block"), network=MemoryNetwork())
    try:
        sub = await a.subscribe("local.block")
        reader = asyncio.ensure_future(_slow_reader(sub, N))
        await _publish(a, "local.block", N)
        got = await asyncio.wait_for(reader, 60)
        print(f"\nlocal: {len(got):,} of {N:,} received, sub.dropped={sub.dropped}, "
              f"delivery_dropped={a.outbox_dropped}, stalls={a.delivery.stalls}")
        assert got == list(range(N)) and sub.dropped == 0 and a.outbox_dropped == 0
        assert a.delivery.stalls > 0
    finally:
        await a.stop()


async def test_drop_oldest_losses_are_the_subscriptions_gap_count() -> None:
    a, b = await _pair("drop_oldest", quic=False)
    try:
        sub = await a.subscribe("flood.drop")
        await b.wait_for_subscriber("flood.drop", timeout=10)
        await _publish(b, "flood.drop", N)  # the reader reads nothing meanwhile
        await eventually(lambda: len(sub._queue) + sub.dropped >= N, timeout=30)
        got = []
        while sub.pending:
            got.append(int.from_bytes((await sub.get()).payload[-8:], "big"))
        print(f"\ndrop_oldest, queue 256: {len(got)} received + {sub.dropped:,} dropped = {len(got) + sub.dropped:,} "
              f"of {N:,}; delivery_dropped={a.outbox_dropped}, inbox_dropped={a.inbox_dropped}")
        assert len(got) + sub.dropped == N
        assert sub.dropped == N - 256 and got == list(range(N - 256, N))  # the newest stay
        assert a.outbox_dropped == 0 and a.inbox_dropped == 0
    finally:
        await b.stop()
        await a.stop()


async def test_policy_per_subscription() -> None:
    """``subscribe(..., overflow="block")`` on a node whose default drops: that subscription loses
    nothing while a ``drop_oldest`` one on the same topic drops (counted)."""
    a = await Node.start(_config("drop_oldest"), network=MemoryNetwork())
    try:
        blocking = await a.subscribe("both", overflow="block")
        dropping = await a.subscribe("both", queue_size=64)
        reader = asyncio.ensure_future(_slow_reader(blocking, 5_000))
        await _publish(a, "both", 5_000)
        got = await asyncio.wait_for(reader, 60)
        print(f"\nsame topic: block subscription {len(got):,} of 5,000 (dropped {blocking.dropped}); "
              f"drop_oldest subscription of 64 dropped {dropping.dropped:,}, kept {dropping.pending}")
        assert got == list(range(5_000)) and blocking.dropped == 0
        assert dropping.dropped + dropping.pending == 5_000 and dropping.dropped > 0
        with pytest.raises(ValueError, match="overflow"):
            await a.subscribe("x", overflow="stall")
    finally:
        await a.stop()


async def test_dead_block_reader_holds_the_node_at_most_its_timeout() -> None:
    a, b = await _pair("block", quic=False, subscriber_block_timeout=0.3)
    try:
        dead = await a.subscribe("flood.dead")  # never read
        await b.wait_for_subscriber("flood.dead", timeout=10)
        n = 5_000
        t0 = time.perf_counter()
        await _publish(b, "flood.dead", n)
        await eventually(lambda: dead.pending + dead.dropped >= n, timeout=30)
        seconds = time.perf_counter() - t0
        print(f"\ndead block reader: {n:,} published in {seconds:.2f}s, pending={dead.pending}, "
              f"dropped={dead.dropped:,}, block timeouts={a.delivery.block_timeouts}")
        assert dead.pending + dead.dropped == n and dead.dropped > 0
        assert a.delivery.block_timeouts >= 1 and a.outbox_dropped == 0
        # the node goes on serving: a live subscription still gets its messages
        live = await a.subscribe("other.topic")
        await b.wait_for_subscriber("other.topic", timeout=10)
        await b.publish("other.topic", b"hello")
        assert (await asyncio.wait_for(live.get(), 5)).payload == b"hello"
    finally:
        await b.stop()
        await a.stop()
