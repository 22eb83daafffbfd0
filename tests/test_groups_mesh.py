"""Work-queue groups with real nodes over QUIC on loopback (issue #15): a group of 3 workers on 3
nodes takes 10,000 messages of a publisher on a 4th node, each exactly once and spread evenly;
a worker whose node dies mid-run (its socket gone, no close frame) loses no message."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from quicmesh.config import NodeConfig, PubSubConfig, TransportConfig
from quicmesh.core.groups import group_name
from quicmesh.runtime.node import Node, Subscription
from quicmesh.testing.wait import eventually

FAST = TransportConfig(handshake_timeout=5.0, idle_timeout=3.0, keepalive_interval=0.5)
PUBSUB = PubSubConfig(group_ack_timeout=1.0, group_suspect_ttl=5.0)
N = 10_000


async def _mesh(n: int) -> list[Node]:
    first = await Node.start(NodeConfig(realm="grp", transport=FAST, pubsub=PUBSUB))
    nodes = [first]
    for _ in range(n - 1):
        nodes.append(await Node.start(NodeConfig(realm="grp", transport=FAST, pubsub=PUBSUB,
                                                 bootstrap=(first.address,))))
    for node in nodes:
        await _peered(node)
    return nodes


async def _peered(node: Node) -> None:
    await node.wait_until(lambda: len(node.peers()) >= 1, timeout=20)


async def _members_known(pub: Node, count: int) -> None:
    name = group_name("workers", "jobs.>")
    await pub.wait_until(lambda: len(pub.services.providers(name, pub._now())) == count, timeout=20)


class _Worker:
    def __init__(self, sub: Subscription, seen: Counter[bytes]) -> None:
        self.sub = sub
        self.got: list[bytes] = []
        self.seen = seen
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.sub:
            self.got.append(msg.payload)
            self.seen[msg.payload] += 1


async def _publish(pub: Node, n: int, *, on: int = -1, hook: object = None) -> None:
    for i in range(n):
        await pub.publish("jobs.a", b"%d" % i)
        if i % 200 == 199:
            await asyncio.sleep(0.01)  # a bounded producer: lets the acks come back
        if i == on and callable(hook):
            hook()


async def test_three_workers_take_ten_thousand_messages_once_each_evenly() -> None:
    nodes = await _mesh(4)
    pub, ws = nodes[0], nodes[1:]
    seen: Counter[bytes] = Counter()
    try:
        workers = [_Worker(await w.subscribe("jobs.>", group="workers"), seen) for w in ws]
        plain = await ws[0].subscribe("jobs.>")  # an ordinary subscriber still gets everything
        await _members_known(pub, 3)
        await pub.wait_for_subscriber("jobs.a", timeout=20)
        t0 = time.monotonic()
        await _publish(pub, N)
        await eventually(lambda: sum(seen.values()) >= N and pub.core.groups.stats()["unacked"] == 0,
                         timeout=40, interval=0.05)
        took = time.monotonic() - t0
        counts = [len(w.got) for w in workers]
        dup = sum(c - 1 for c in seen.values() if c > 1)
        even = N / 3
        spread = max(abs(c - even) / even for c in counts)
        print(f"\n{N:,} messages to a group of 3 workers on 3 nodes in {took:.2f} s: per worker {counts}, "
              f"{len(seen):,} distinct, {dup} duplicates, max deviation from even {spread:.1%}")
        assert len(seen) == N and dup == 0
        assert spread <= 0.20
        g = pub.gauges()  # what /metrics exports
        assert g["groups_published_total"] == N and g["groups_unacked"] == 0
        await eventually(lambda: plain.pending + plain.dropped >= N, timeout=20)
        assert plain.pending + plain.dropped == N  # every message, to the ordinary subscriber
    finally:
        for node in nodes:
            await node.stop()


async def test_a_killed_worker_loses_no_message() -> None:
    nodes = await _mesh(4)
    pub, ws = nodes[0], nodes[1:]
    seen: Counter[bytes] = Counter()
    try:
        workers = [_Worker(await w.subscribe("jobs.>", group="workers"), seen) for w in ws]
        await _members_known(pub, 3)
        victim = ws[2]

        def kill() -> None:  # the process "dies": no close frame, its worker stops reading
            workers[2].task.cancel()
            ep = victim.transport._endpoint  # type: ignore[attr-defined]
            ep.transport.abort()

        t0 = time.monotonic()
        await _publish(pub, N, on=N // 3, hook=kill)
        await eventually(lambda: set(seen) >= {b"%d" % i for i in range(N)}, timeout=40, interval=0.1)
        took = time.monotonic() - t0
        counts = [len(w.got) for w in workers]
        dup = sum(c - 1 for c in seen.values() if c > 1)
        st = pub.core.groups.stats()
        print(f"\n{N:,} messages, worker 3 killed after {N // 3:,} published: all {len(seen):,} taken in "
              f"{took:.2f} s, per worker {counts}, {st['redelivered']} redelivered, {dup} duplicates, "
              f"0 lost")
        assert len(seen) == N
        assert st["redelivered"] > 0
        assert took < 15  # redelivered within bounded time (the ack timeout is 1 s here)
    finally:
        for node in nodes:
            await node.stop()


async def test_messages_a_closed_member_did_not_read_go_to_another() -> None:
    nodes = await _mesh(3)
    pub, lazy, busy = nodes
    seen: Counter[bytes] = Counter()
    try:
        idle = await lazy.subscribe("jobs.>", group="workers")  # never reads
        await _members_known(pub, 1)
        for i in range(50):
            await pub.publish("jobs.a", b"%d" % i)
        await eventually(lambda: idle.pending == 50, timeout=10)
        worker = _Worker(await busy.subscribe("jobs.>", group="workers"), seen)
        await _members_known(pub, 2)
        t0 = time.monotonic()
        await idle.close()  # its 50 unread messages are given back and go to the other member
        await eventually(lambda: len(seen) == 50, timeout=10)
        print(f"\n50 unread messages of a closed member taken by the other in {time.monotonic() - t0:.3f} s")
        assert sorted(worker.got) == sorted(b"%d" % i for i in range(50))
        await eventually(lambda: pub.core.groups.stats()["unacked"] == 0)
        assert pub.core.groups.stats()["nacked"] == 50
    finally:
        for node in nodes:
            await node.stop()
