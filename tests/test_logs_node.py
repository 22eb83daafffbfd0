"""Replicated logs through the Node API over the in-memory transport: append and watch, sync
between connected nodes, the LWW map, catch-up after a disconnect, store caps under a flood,
SQLite persistence across a restart, and release of handles and watchers."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from storekit import hold_loads

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, StoreConfig
from quicmesh.core.log_messages import SyncRequest
from quicmesh.core.log_peers import REQ_BURST, REQ_RATE
from quicmesh.errors import LimitExceeded, NodeClosed, OperationTooLarge, SubscriptionClosed
from quicmesh.identity import KeyPair, NodeId
from quicmesh.runtime.logs import KvChange, LogEntry
from quicmesh.runtime.memory import MemoryNetwork
from quicmesh.runtime.node import Node
from quicmesh.store import append as store_append
from quicmesh.testing.wait import eventually


async def take(it: AsyncIterator[LogEntry], n: int, timeout: float = 10.0) -> list[LogEntry]:
    async with asyncio.timeout(timeout):
        return [await anext(it) for _ in range(n)]


@pytest.fixture
def net() -> MemoryNetwork:
    return MemoryNetwork()


async def start(net: MemoryNetwork, *peers: Node, **cfg: Any) -> Node:
    config = NodeConfig(realm="logs", bootstrap=tuple(p.address for p in peers), **cfg)
    node = await Node.start(config, network=net)
    await eventually(lambda: all(p.id in node.peers() and node.id in p.peers() for p in peers))
    return node


def sizes(node: Node) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in node.registry.snapshot():
        out[s.name] = out.get(s.name, 0) + s.size
    return out


def per_author_in_order(entries: list[LogEntry]) -> bool:
    last: dict[NodeId, int] = {}
    for e in entries:
        if e.seq <= last.get(e.author, -1):
            return False
        last[e.author] = e.seq
    return True


async def test_append_and_watch_locally(net: MemoryNetwork) -> None:
    a = await start(net)
    try:
        watch = a.watch_log("inventory")
        log = a.log("inventory")
        got = [await log.append(b"item-%d" % i) for i in range(5)]
        assert [e.seq for e in got] == [0, 1, 2, 3, 4]
        assert all(e.author == a.id and e.log == "inventory" for e in got)
        seen = await take(watch, 5)
        assert seen == got
        assert log.heads() == {a.id: 4}
        assert [e.payload for e in await log.read()] == [b"item-%d" % i for i in range(5)]
        assert got[1].timestamp >= got[0].timestamp and len(got[0].id) == 32
        with pytest.raises(OperationTooLarge):
            await log.append(b"x" * (a.config.store.max_operation_size + 1))
        h = a.health()
        assert h["store"]["operations"] == 5 and h["store"]["logs"] == 1 and h["store"]["bytes"] > 0
        assert h["store"]["kind"] == "memory"
        assert h["memory_store"] == h["store"]  # the name operators look for
        await watch.close()
        await log.close()
    finally:
        await a.stop()


async def test_two_nodes_converge(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net, a)
    try:
        la, lb = a.log("inv"), b.log("inv")
        wa, wb = a.watch_log("inv"), b.watch_log("inv")
        await eventually(lambda: "inv" in (b.logs._peer_logs.peek(a.id) or ()))
        await eventually(lambda: "inv" in (a.logs._peer_logs.peek(b.id) or ()))
        for i in range(50):
            await la.append(b"a%d" % i)
            await lb.append(b"b%d" % i)
        seen_a = await take(wa, 100)
        seen_b = await take(wb, 100)
        want = sorted([b"a%d" % i for i in range(50)] + [b"b%d" % i for i in range(50)])
        for seen in (seen_a, seen_b):
            assert per_author_in_order(seen)
            assert sorted(e.payload for e in seen) == want
        assert la.heads() == lb.heads() == {a.id: 49, b.id: 49}
    finally:
        await b.stop()
        await a.stop()


async def test_three_nodes_in_a_line_converge_and_ops_arrive_before_interest(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net, a)
    c = await start(net, a)  # b - a - c: b and c are not connected
    try:
        lb = b.log("line")
        for i in range(100):  # written before anyone else is interested: pulled later
            await lb.append(b"early%d" % i)
        la, lc = a.log("line"), c.log("line")
        wc = c.watch_log("line")
        await eventually(lambda: la.heads().get(b.id) == 99)
        await eventually(lambda: "line" in (a.logs._peer_logs.peek(c.id) or ()))
        for i in range(20):
            await lb.append(b"live%d" % i)  # pushed live b -> a -> c
        await eventually(lambda: lc.heads() == la.heads() == lb.heads() == {b.id: 119})
        got = await take(wc, 120)
        assert per_author_in_order(got)
        assert [e.seq for e in got] == list(range(120))
    finally:
        for n in (c, b, a):
            await n.stop()


async def test_kv_converges_with_deterministic_tie_break(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net, a)
    c = await start(net, a)
    try:
        maps = [await n.kv("config") for n in (a, b, c)]
        await eventually(lambda: a.logs._sharing("config") and len(a.logs._sharing("config")) == 2)
        await eventually(lambda: b.logs._sharing("config") and c.logs._sharing("config"))
        watch = maps[2].watch()
        await maps[0].set("colour", b"red")
        await maps[1].set("size", b"L")
        await eventually(lambda: all(m.items() == [("colour", b"red"), ("size", b"L")] for m in maps))
        change = await asyncio.wait_for(watch.get(), 5)
        assert isinstance(change, KvChange) and change.key in ("colour", "size")
        await maps[2].delete("colour")
        await eventually(lambda: all(m.items() == [("size", b"L")] for m in maps))
        assert await maps[0].get("colour") is None and await maps[0].get("colour", b"?") == b"?"
        # same timestamp on two nodes: the greater author id wins, on every replica
        fixed = time.time_ns() // 1000 + 1_000_000  # within store.max_clock_skew of the wall clock
        for n in (a, b, c):
            n.logs.clock_us = lambda: fixed
        # concurrent writes (neither has seen the other): same timestamp
        await asyncio.gather(maps[0].set("tie", b"from-a"), maps[1].set("tie", b"from-b"))
        winner = b"from-a" if a.id.raw > b.id.raw else b"from-b"
        await eventually(lambda: all(m.snapshot() == maps[0].snapshot() for m in maps) and "tie" in maps[2])
        assert [await m.get("tie") for m in maps] == [winner] * 3
        stamp = maps[2].snapshot()["tie"][0]
        assert stamp[0] == fixed and stamp[1] == max(a.id.raw, b.id.raw)
        # a later write by the loser (same clock) wins: it is stamped after the write it saw
        loser = maps[1] if winner == b"from-a" else maps[0]
        await loser.set("tie", b"again")
        await eventually(lambda: all(m.snapshot() == maps[0].snapshot() for m in maps))
        assert [await m.get("tie") for m in maps] == [b"again"] * 3
        for m in maps:
            await m.close()
        await watch.close()
    finally:
        for n in (c, b, a):
            await n.stop()


async def test_disconnected_node_catches_up(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net)
    try:
        await b.connect(a.address)
        la, lb = a.log("cat"), b.log("cat")
        kva, kvb = await a.kv("cfg"), await b.kv("cfg")
        await eventually(lambda: a.logs._sharing("cat") == [b.id] and a.logs._sharing("cfg") == [b.id])
        await la.append(b"before")
        await eventually(lambda: lb.heads() == {a.id: 0})
        conn = a.transport.get(b.id)
        assert conn is not None
        await conn.close()
        await eventually(lambda: not a.peers() and not b.peers())
        for i in range(300):  # several sync batches
            await la.append(b"while-down-%d" % i)
        await kva.set("mode", b"maintenance")
        assert lb.heads() == {a.id: 0}
        wb = b.watch_log("cat")
        await b.connect(a.address)
        await eventually(lambda: lb.heads() == la.heads() == {a.id: 300})
        got = await take(wb, 300)
        assert [e.seq for e in got] == list(range(1, 301))
        await eventually(lambda: kvb.items() == [("mode", b"maintenance")])
        assert b.logs.sync is not None and b.logs.sync.invalid_ops == 0
    finally:
        await b.stop()
        await a.stop()


async def test_memory_store_under_flood_of_foreign_logs_keeps_caps_and_own_appends(net: MemoryNetwork) -> None:
    caps = StoreConfig(max_operations=300, max_logs=12, max_bytes=256 * 1024, max_log_length=40)
    a = await start(net, store=caps)
    b = await start(net, a)
    try:
        la = a.log("flood")
        for i in range(20):
            await la.append(b"mine-%d" % i)
        # b holds 30 foreign authors' logs of the same name, 60 operations each
        assert b.logs.store is not None
        for k in range(30):
            kp = KeyPair.from_seed(bytes([k + 7]) * 32)
            for i in range(60):
                store_append(b.logs.store, kp, "flood", b"f" * 200, 1_000_000 + i, realm="logs")
        lb = b.log("flood")
        assert a.logs.sync is not None
        await eventually(lambda: a.logs.sync is not None and a.logs.sync.ops_refused > 0 and not a.logs.sync.running())
        counts = a.logs.store.counts() if a.logs.store else None
        assert counts is not None
        assert counts.operations <= caps.max_operations
        assert counts.logs <= caps.max_logs
        assert counts.bytes <= caps.max_bytes
        assert [e.payload for e in await la.read(limit=100)] == [b"mine-%d" % i for i in range(20)]
        entry = await la.append(b"still-writable")
        assert entry.seq == 20
        assert a.logs.store is not None
        assert a.health()["store"]["operations"] == a.logs.store.counts().operations
        await lb.close()
    finally:
        await b.stop()
        await a.stop()


async def test_handles_and_watchers_are_released_on_close_and_gc(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net, a)
    try:
        keep = b.log("x")  # b stays interested throughout
        await eventually(lambda: "x" in (a.logs._peer_logs.peek(b.id) or ()))

        def log_sizes() -> dict[str, int]:
            # the heads mirror follows the store (one entry per stored log), which keeps the operations
            skip = ("logs.req_tokens", "logs.heads")
            return {k: v for k, v in sizes(a).items() if k.startswith(("logs.", "logsync.")) and k not in skip}

        baseline = log_sizes()
        for _ in range(3):
            log = a.log("x")
            w = a.watch_log("x")
            kv = await a.kv("x")
            kw = kv.watch()
            await eventually(lambda: "x" in (b.logs._peer_logs.peek(a.id) or ()))
            await log.append(b"v")
            await w.close()
            await kw.close()
            await kv.close()
            await log.close()
            await eventually(lambda: "x" not in (b.logs._peer_logs.peek(a.id) or ()))
            assert a.logs._refs == {} and len(a.logs._handles) == 0 and a.logs._maps == {}
            assert a.logs._log_watchers == {}
            # the same, released by the garbage collector instead of close()
            a.log("x")
            a.watch_log("x", queue_size=4)
            kv2 = await a.kv("x")
            kv2.watch()
            del kv2
            gc.collect()
            await eventually(lambda: len(a.logs._handles) == 0 and not a.logs._refs and not a.logs._maps)
            await eventually(lambda: "x" not in (b.logs._peer_logs.peek(a.id) or ()))
        assert a.logs.sync is not None and a.logs.sync.interests() == {}
        # the store keeps the operations, b's token bucket is per connection; nothing else grew
        assert log_sizes() == baseline
        assert sizes(a)["logs.req_tokens"] <= 1
        await keep.close()
    finally:
        await b.stop()
        await a.stop()


async def test_slow_watcher_drops_oldest_and_never_stalls(net: MemoryNetwork) -> None:
    a = await start(net)
    try:
        stuck = a.watch_log("s", queue_size=8)
        fast = a.watch_log("s")
        log = a.log("s")
        for i in range(100):
            await log.append(b"%d" % i)
        got = await take(fast, 100)
        assert [e.seq for e in got] == list(range(100))
        assert stuck.pending == 8 and stuck.dropped == 92
        assert [(await stuck.get()).seq for _ in range(8)] == list(range(92, 100))
        await stuck.close()
        with pytest.raises(SubscriptionClosed):
            await stuck.get()
    finally:
        await a.stop()


async def test_sqlite_log_continues_after_restart(net: MemoryNetwork, tmp_path: Path) -> None:
    cfg = NodeConfig(realm="logs", data_dir=str(tmp_path / "n1"))
    a = await Node.start(cfg, network=net)
    first_id = a.id
    try:
        log = a.log("journal")
        entries = [await log.append(b"e%d" % i) for i in range(3)]
        assert a.health()["store"]["kind"] == "sqlite"
        kv = await a.kv("settings")
        await kv.set("k", b"v1")
    finally:
        await a.stop()
    a = await Node.start(cfg, network=net)
    try:
        assert a.id == first_id
        log = a.log("journal")
        assert log.heads() == {a.id: 2}
        nxt = await log.append(b"e3")
        assert nxt.seq == 3
        stored = a.logs.store.get(a.id, "journal", 3) if a.logs.store else None
        assert stored is not None and stored.op.header.backlink == entries[2].id
        kv = await a.kv("settings")
        assert await kv.get("k") == b"v1"
        # a peer with a memory store syncs the whole log from the SQLite node (batch path in the thread)
        b = await start(net, a)
        try:
            lb = b.log("journal")
            await eventually(lambda: lb.heads() == {a.id: 3})
            for i in range(150):
                await lb.append(b"from-b-%d" % i)
            await eventually(lambda: log.heads() == {a.id: 3, b.id: 149})
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_sqlite_node_pulls_batches_in_worker_thread(
    net: MemoryNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quicmesh.store.sqlite import SqliteStore

    on_loop: list[str] = []  # SQLite calls made on the event loop's thread: must stay empty
    for method in ("ingest", "append_local", "iter_range", "heads", "head", "low", "get", "close"):
        original = getattr(SqliteStore, method)

        def spy(self: SqliteStore, *args: object, _f: Any = original, _m: str = method, **kw: object) -> object:
            if threading.current_thread() is threading.main_thread():
                on_loop.append(_m)
            return _f(self, *args, **kw)

        monkeypatch.setattr(SqliteStore, method, spy)
    b = await start(net)
    try:
        lb = b.log("bulk")
        for i in range(300):
            await lb.append(b"x%d" % i)
        a = await Node.start(NodeConfig(realm="logs", data_dir=str(tmp_path / "a")), network=net)
        try:
            wa = a.watch_log("bulk")
            la = a.log("bulk")
            await a.connect(b.address)
            await eventually(lambda: la.heads() == {b.id: 299})
            got = await take(wa, 300)
            assert [e.seq for e in got] == list(range(300))
            assert a.logs.sync is not None and a.logs.sync.ops_stored == 300
            assert a.logs.batches_in_thread >= 300 // a.config.store.sync_batch_ops  # ingested off the loop
            # appends, serving b's pulls, live pushes, replays and map loads all run on the worker
            for i in range(5):
                await la.append(b"a%d" % i)
            await eventually(lambda: lb.heads() == {b.id: 299, a.id: 4})
            replay = a.watch_log("bulk", replay=True)
            assert len(await take(replay, 305)) == 305
            await lb.append(b"live")
            await eventually(lambda: la.heads() == {b.id: 300, a.id: 4})
            kv = await a.kv("bulk")
            assert len(kv) == 0  # not map entries, but read through
            assert a.logs.health()["logs"]["store_requests_in_flight"] == 0
        finally:
            await a.stop()
        assert on_loop == []
    finally:
        await b.stop()


async def test_sync_requests_are_rate_limited_per_peer(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net, a)
    try:
        a.log("r")
        conn = b.transport.get(a.id)
        assert conn is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(1000):
            conn.send(SyncRequest(sid=i, log="r", heads=[]))
            if i % 100 == 99:
                await asyncio.sleep(0)
        await eventually(lambda: a.logs.requests_limited + a.logs.requests_served == 1000, interval=0.002)
        elapsed = loop.time() - t0
        assert a.logs.requests_served <= REQ_BURST + REQ_RATE * elapsed + 1
        assert a.logs.requests_limited > 0
        assert a.health()["logs"]["requests_limited_total"] == a.logs.requests_limited
    finally:
        await b.stop()
        await a.stop()


async def test_interest_names_are_capped(net: MemoryNetwork) -> None:
    a = await start(net, store=StoreConfig(max_interests=3))
    try:
        handles = [a.log(f"n{i}") for i in range(3)]
        with pytest.raises(LimitExceeded):
            a.log("n3")
        h = a.log("n0")  # a second handle on a name already open is fine
        await h.close()
        await handles[0].close()
        a.log("n3")
    finally:
        await a.stop()


async def test_stop_ends_watchers_and_refuses_new_handles(net: MemoryNetwork) -> None:
    a = await start(net)
    w = a.watch_log("z")
    log = a.log("z")
    await log.append(b"one")
    await a.stop()
    assert [e.payload async for e in w] == [b"one"]  # drained, then the iteration ends
    with pytest.raises(NodeClosed):
        a.log("z")
    with pytest.raises(NodeClosed):
        await log.append(b"two")


async def test_cancelled_append_is_still_stored_and_published(net: MemoryNetwork, tmp_path: Path) -> None:
    a = await Node.start(NodeConfig(realm="logs", data_dir=str(tmp_path / "c")), network=net)
    try:
        w = a.watch_log("c")
        log = a.log("c")
        task = asyncio.create_task(log.append(b"cancelled-caller"))
        await asyncio.sleep(0)  # the append is now running in the worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        entry = await asyncio.wait_for(w.get(), 5)
        assert entry.payload == b"cancelled-caller" and entry.seq == 0
        assert (await log.append(b"next")).seq == 1
    finally:
        await a.stop()


async def test_watch_with_replay_yields_stored_then_live_without_duplicates(net: MemoryNetwork, tmp_path: Path) -> None:
    b = await start(net)
    a = await Node.start(NodeConfig(realm="logs", data_dir=str(tmp_path / "r")), network=net)
    try:
        la, lb = a.log("r"), b.log("r")
        for i in range(300):
            await la.append(b"a%d" % i)
        await a.connect(b.address)
        await eventually(lambda: "r" in (b.logs._peer_logs.peek(a.id) or ()))
        for i in range(10):
            await lb.append(b"b%d" % i)
        await eventually(lambda: la.heads() == {a.id: 299, b.id: 9})
        w = a.watch_log("r", replay=True)
        await la.append(b"live-a")
        await lb.append(b"live-b")
        got = await take(w, 312)
        assert per_author_in_order(got)
        assert [e.payload for e in got if e.author == a.id] == [b"a%d" % i for i in range(300)] + [b"live-a"]
        assert [e.payload for e in got if e.author == b.id] == [b"b%d" % i for i in range(10)] + [b"live-b"]
        await la.append(b"end")
        assert (await asyncio.wait_for(w.get(), 5)).payload == b"end"  # nothing was delivered twice
        await w.close()
    finally:
        await a.stop()
        await b.stop()


async def test_replaced_connection_relearns_interest_and_resyncs_at_once(net: MemoryNetwork) -> None:
    a = await start(net)
    b = await start(net, a)
    try:
        la, lb = a.log("j"), b.log("j")
        await eventually(lambda: a.logs._sharing("j") == [b.id] and b.logs._sharing("j") == [a.id])
        await la.append(b"x")
        await eventually(lambda: lb.heads() == {a.id: 0} and a.logs.sync is not None and not a.logs.sync.running())
        assert a.logs.sync is not None
        started = a.logs.sync.sessions_started
        # what a QUIC transport reports when a restarted peer's new connection replaces the old one
        ca, cb = a.transport.get(b.id), b.transport.get(a.id)
        assert ca is not None and cb is not None
        a.on_connection(ca)
        b.on_connection(cb)
        await eventually(lambda: a.logs.sync is not None and a.logs.sync.sessions_started > started)
        await eventually(lambda: a.logs._sharing("j") == [b.id] and b.logs._sharing("j") == [a.id])
        await lb.append(b"y")
        await eventually(lambda: la.heads() == lb.heads() == {a.id: 0, b.id: 0})
    finally:
        await b.stop()
        await a.stop()


async def test_store_worker_is_fifo_bounded_and_drains_on_close(registry: ContainerRegistry) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from quicmesh.errors import ContainerFull
    from quicmesh.runtime.store_worker import StoreWorker
    from quicmesh.store import MemoryStore

    store = MemoryStore(StoreConfig(), registry=registry)
    for executor in (None, ThreadPoolExecutor(max_workers=1)):
        worker = StoreWorker(4, registry=registry)
        worker.start(store, executor)
        order: list[object] = []
        first = worker.read(lambda s: "first")
        worker.submit(lambda s: 1, order.append)
        worker.submit(lambda s: 1 / 0, order.append)  # an exception is the job's result
        worker.submit(lambda s: s.counts().operations, order.append)
        with pytest.raises(ContainerFull):  # the queue holds 4
            worker.submit(lambda s: 4, order.append)
        (stats,) = [c for c in registry.snapshot() if c.name == "logs.store_jobs" and c.rejections]
        assert stats.capacity == 4 and stats.rejections == 1
        assert await first == "first"
        await worker.close()  # runs what is queued, then ends
        assert order[0] == 1 and isinstance(order[1], ZeroDivisionError) and order[2] == 0 and len(order) == 3
        with pytest.raises(NodeClosed):
            worker.submit(lambda s: 5, order.append)
        if executor is not None:
            executor.shutdown()


async def test_concurrent_appends_keep_their_order(net: MemoryNetwork) -> None:
    a = await start(net)
    try:
        log = a.log("order")
        w = a.watch_log("order")
        entries = await asyncio.gather(*(log.append(b"%d" % i) for i in range(50)))
        assert [e.seq for e in entries] == list(range(50))
        assert [e.payload for e in entries] == [b"%d" % i for i in range(50)]
        assert [e.seq for e in await take(w, 50)] == list(range(50))
        assert log.heads() == {a.id: 49}
    finally:
        await a.stop()


async def test_a_cancelled_first_opener_of_a_map_does_not_fail_the_others(net: MemoryNetwork) -> None:
    """``node.kv(name)`` loads the map from the store once, for every opener. When the opener that
    started the load is cancelled (its caller gave up: a timeout, a client that left), the others
    waiting for the same map still get it (found by the plain-node lab's set test, through the
    HTTP face: a concurrent request answered 503 ``NodeClosed`` "cancelled")."""
    a = await start(net)
    try:
        held = hold_loads(a)  # the store read, held until the test lets it go
        gate, entered = held.gate, held.entered
        first = asyncio.ensure_future(a.kv("m"))
        await eventually(entered.is_set, timeout=10)
        second = asyncio.ensure_future(a.kv("m"))
        await asyncio.sleep(0)  # the second opener is waiting on the load
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        m = await asyncio.wait_for(second, 10)
        await m.set("k", b"v")
        assert await m.get("k") == b"v"
        third = await a.kv("m")  # the map stays open for later openers
        assert await third.get("k") == b"v"
    finally:
        gate.set()
        await a.stop()
