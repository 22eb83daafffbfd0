"""Log sync between stores over an in-memory exchange of the l.* messages (through the codec)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable
from pathlib import Path
from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import StoreConfig
from quicmesh.core.effects import Disconnect, Send
from quicmesh.core.log_effects import Appended, LogOutput, OperationStored, StoreRead, StoreWrite
from quicmesh.core.log_messages import LOG_MESSAGES, LiveOp, SyncBatch, SyncRequest
from quicmesh.core.logsync import GossipBuffer, LogSync
from quicmesh.core.oplog import create_operation, decode_operation, encode_operation
from quicmesh.core.wire import Codec, Message
from quicmesh.errors import LimitExceeded
from quicmesh.identity import KeyPair, NodeId
from quicmesh.store import MemoryStore, Store, StoredOp, append

CFG = StoreConfig(sync_timeout=5.0, sync_retry_min=1.0, sync_retry_max=60.0, resync_interval=600.0)
CODEC = Codec(LOG_MESSAGES)


def head_seq(store: Store, author: NodeId, log: str) -> int | None:
    """The sequence number of ``log``'s head in ``store`` (``None`` when it holds none)."""
    head = store.head(author, log)
    return None if head is None else head.seq


def execute(sync: LogSync, store: Store, outputs: list[LogOutput], now: float) -> list[LogOutput]:
    """Run the store requests among ``outputs`` against ``store``, FIFO, as a driver does (each
    after the outputs before it), and return the other outputs in order."""
    out: list[LogOutput] = []
    reqs: deque[StoreRead | StoreWrite] = deque()
    todo = outputs
    while True:
        for o in todo:
            if isinstance(o, StoreRead | StoreWrite):
                reqs.append(o)
            else:
                out.append(o)
        if not reqs:
            return out
        req = reqs.popleft()
        try:
            result: object = req.query.run(store)
        except Exception as exc:
            result = exc
        todo = sync.store_done(req.req_id, result, now)


def sync_append(
    sync: LogSync, store: Store, log: str, payload: bytes, *, now: float, now_us: int
) -> tuple[StoredOp, list[LogOutput]]:
    """``sync.append`` run to completion: the stored operation and the other outputs."""
    req_id, outs = sync.append(log, payload, now=now, now_us=now_us)
    done = execute(sync, store, outs, now)
    result = [o for o in done if isinstance(o, Appended) and o.req_id == req_id]
    assert len(result) == 1 and result[0].stored is not None, result
    return result[0].stored, [o for o in done if not isinstance(o, Appended)]


class Net:
    """Zero-latency in-memory exchange with a fake clock; filters can drop or rewrite messages."""

    def __init__(
        self, n: int, registry: ContainerRegistry, cfg: StoreConfig = CFG, stores: list[Store] | None = None
    ) -> None:
        self.keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
        self.ids = [k.node_id for k in self.keys]
        self.stores: list[Store] = stores or [MemoryStore(cfg, registry=registry) for _ in range(n)]
        self.syncs = {k.node_id: LogSync(k, cfg, Random(i), registry) for i, k in enumerate(self.keys)}
        self.store_of = dict(zip(self.ids, self.stores, strict=True))
        self.now = 0.0
        self.queue: deque[tuple[NodeId, NodeId, Message]] = deque()
        self.stored: dict[NodeId, list[OperationStored]] = {i: [] for i in self.ids}
        self.disconnects: list[tuple[NodeId, NodeId, str]] = []
        self.sent: list[tuple[NodeId, NodeId, Message]] = []
        self.drop: Callable[[NodeId, NodeId, Message], bool] = lambda s, d, m: False
        self.rewrite: Callable[[NodeId, NodeId, Message], Message] = lambda s, d, m: m

    def append(self, src: NodeId, log: str, payload: bytes, now_us: int) -> tuple[StoredOp, list[LogOutput]]:
        return sync_append(self.syncs[src], self.store_of[src], log, payload, now=self.now, now_us=now_us)

    def apply(self, src: NodeId, effects: list[LogOutput]) -> None:
        for e in execute(self.syncs[src], self.store_of[src], effects, self.now):
            if isinstance(e, Send):
                body = CODEC.encode(e.message)
                assert len(body) <= CODEC.max_frame_size
                self.queue.append((src, e.peer, CODEC.decode(body)))
            elif isinstance(e, OperationStored):
                self.stored[src].append(e)
            elif isinstance(e, Disconnect):
                self.disconnects.append((src, e.peer, e.reason))

    def connect_all(self, log: str = "l") -> None:
        for me in self.ids:
            self.apply(me, self.syncs[me].interest(log, [p for p in self.ids if p != me], self.now))
        for a in self.ids:
            for b in self.ids:
                if a != b:
                    self.apply(a, self.syncs[a].peer_connected(b, self.now))

    def pump(self, limit: int = 100_000) -> int:
        n = 0
        while self.queue and n < limit:
            src, dst, msg = self.queue.popleft()
            n += 1
            if self.drop(src, dst, msg):
                continue
            msg = self.rewrite(src, dst, msg)
            self.sent.append((src, dst, msg))
            self.apply(dst, self.syncs[dst].handle_message(src, msg, self.now))
        return n

    def step_timers(self) -> bool:
        deadlines = [d for s in self.syncs.values() if (d := s.next_deadline()) is not None]
        if not deadlines:
            return False
        self.now = max(self.now, min(deadlines))
        for me, sync in self.syncs.items():
            d = sync.next_deadline()
            if d is not None and d <= self.now:
                self.apply(me, sync.handle_timer(self.now))
        return True

    def run_until(self, cond: Callable[[], bool], max_time: float = 10_000.0) -> None:
        for _ in range(10_000):
            self.pump()
            if cond():
                return
            if self.now > max_time or not self.step_timers():
                break
        assert cond(), "condition not reached"

    def settle(self) -> None:
        self.pump()
        assert not self.queue


def same_logs(a: Store, b: Store) -> bool:
    if a.heads() != b.heads():
        return False
    for (author, log), hi in a.heads().items():
        lo = a.low(author, log)
        assert lo is not None
        ra = a.iter_range(author, log, lo, hi - lo + 1)
        rb = b.iter_range(author, log, lo, hi - lo + 1)
        if [x.id for x in ra] != [x.id for x in rb]:
            return False
    return True


def test_two_stores_converge_in_bounded_batches(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    for i in range(200):
        append(net.stores[0], net.keys[0], "l", b"a%d" % i, i)
    for i in range(50):
        append(net.stores[1], net.keys[1], "l", b"b%d" % i, i)
    append(net.stores[0], net.keys[0], "other", b"not shared", 0)
    net.connect_all()
    net.run_until(lambda: not net.queue and not any(s.running() for s in net.syncs.values()))
    assert net.stores[1].heads("l") == net.stores[0].heads("l")
    assert net.stores[1].head(a, "other") is None  # only the log of interest
    batches = [m for _, _, m in net.sent if isinstance(m, SyncBatch)]
    assert max(len(m.ops) for m in batches) == CFG.sync_batch_ops
    assert sum(1 for _, dst, m in net.sent if isinstance(m, SyncRequest) and dst == a) >= 4  # 200 / 64
    assert len(net.stored[b]) == 200 and len(net.stored[a]) == 50
    assert all(e.source == a for e in net.stored[b])
    assert net.syncs[a].sessions_completed >= 1 and net.syncs[a].invalid_ops == 0


def test_batches_are_capped_in_bytes(registry: ContainerRegistry) -> None:
    cfg = dataclasses.replace(CFG, sync_batch_bytes=300_000)
    net = Net(2, registry, cfg)
    for i in range(10):
        append(net.stores[0], net.keys[0], "l", bytes([i]) * 100_000, i)
    net.connect_all()
    net.run_until(lambda: net.stores[1].counts().operations == 10)
    sizes = []
    for src, _, m in net.sent:
        if isinstance(m, SyncBatch) and src == net.ids[0]:
            assert sum(len(o) + len(p) for o, p in m.ops) <= 300_000
            sizes.append(len(m.ops))
    assert sizes and max(sizes) == 2 and sum(sizes) == 10


def test_sync_honours_prune_and_sender_retention(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    ka = net.keys[0]
    ops = []
    prev = None
    for i in range(100):
        op = create_operation(ka, "l", b"x%d" % i, prev, i, prune=(i == 60))
        ops.append(op)
        prev = op
    # b already holds 0..30 from an earlier sync
    for op in ops[:31]:
        net.stores[1].ingest(op, op.header.log.encode() and b"x%d" % op.seq)
    for op in ops:
        net.stores[0].append_local(op, b"x%d" % op.seq)
    assert net.stores[0].low(a, "l") == 60
    net.connect_all()
    net.run_until(lambda: head_seq(net.stores[1], a, "l") == 99)
    assert net.stores[1].low(a, "l") == 60
    assert net.stores[1].counts().operations == 40
    assert same_logs(net.stores[0], net.stores[1])
    # retention on the sender (no prune flag): a lagging replica adopts the sender's window
    net.stores[0].set_retention("r", 5)
    for i in range(20):
        append(net.stores[0], ka, "r", b"r", i)
    net.apply(a, net.syncs[a].interest("r", [b], net.now))
    net.apply(b, net.syncs[b].interest("r", [a], net.now))
    net.run_until(lambda: net.stores[1].head(a, "r") is not None)
    assert net.stores[1].low(a, "r") == 15 and head_seq(net.stores[1], a, "r") == 19


def test_session_timeout_retry_with_capped_backoff_then_converge(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    for i in range(10):
        append(net.stores[0], net.keys[0], "l", b"a%d" % i, i)
    # a never answers b's requests
    net.drop = lambda s, d, m: s == a and isinstance(m, SyncBatch)
    net.connect_all()
    starts: list[float] = []
    sync_b = net.syncs[b]
    while len(starts) < 12:
        before = sync_b.sessions_started
        net.pump()
        assert net.step_timers()
        if sync_b.sessions_started > before:
            starts.append(net.now)
    gaps = [y - x for x, y in itertools.pairwise(starts)]
    assert sync_b.sessions_failed >= 11
    assert all(g >= CFG.sync_retry_min for g in gaps)
    assert gaps[3] > gaps[1]  # exponential
    assert max(gaps) <= CFG.sync_timeout + CFG.sync_retry_max + 1e-9  # capped
    assert gaps[-1] >= 0.75 * CFG.sync_retry_max  # still retrying at the cap: never given up
    assert net.stores[1].counts().operations == 0
    net.drop = lambda s, d, m: False
    net.run_until(lambda: net.stores[1].counts().operations == 10, max_time=net.now + 200)
    assert same_logs(net.stores[0], net.stores[1])


def test_invalid_ops_are_counted_not_stored_and_sender_disconnected(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    for i in range(5):
        append(net.stores[0], net.keys[0], "l", b"a%d" % i, i)

    def corrupt(s: NodeId, d: NodeId, m: Message) -> Message:
        if isinstance(m, SyncBatch) and m.ops:
            ops = list(m.ops)
            data, payload = ops[2 % len(ops)]
            ops[2 % len(ops)] = (data, payload + b"!")
            return SyncBatch(sid=m.sid, log=m.log, ops=ops, more=m.more)
        return m

    net.rewrite = corrupt
    net.connect_all()
    net.run_until(lambda: len(net.disconnects) > 0)
    assert net.disconnects[0] == (b, a, "invalid_operations")
    assert net.syncs[b].invalid_ops == CFG.max_invalid_ops
    # each batch's third op was corrupted: the valid ones before it were stored, it never was
    # (0-1 from the first batch, 2-3 from the retry; op 4 arrived corrupt every time)
    assert head_seq(net.stores[1], a, "l") == 3
    assert net.stores[1].get(a, "l", 4) is None
    # a forged live op is counted and not stored or forwarded
    forged = create_operation(net.keys[0], "l", b"evil", None, 0)
    bad = LiveOp(op=encode_operation(forged)[:-1] + b"\x00", payload=b"evil")
    before = net.syncs[a].invalid_ops
    assert execute(net.syncs[a], net.stores[0], net.syncs[a].handle_message(b, bad, net.now), net.now) == []
    assert net.syncs[a].invalid_ops == before + 1


def test_live_push_and_local_watchers(registry: ContainerRegistry) -> None:
    net = Net(3, registry)
    a, b, c = net.ids
    net.connect_all()
    net.run_until(lambda: not any(s.running() for s in net.syncs.values()))
    _stored, effects = net.append(a, "l", b"hello", 123)
    assert isinstance(effects[0], OperationStored) and effects[0].source is None
    assert {e.peer for e in effects if isinstance(e, Send)} == {b, c}
    net.apply(a, effects)
    net.settle()
    for i in (1, 2):
        got = net.stores[i].get(a, "l", 0)
        assert got is not None and got.payload == b"hello"
    assert [e.op.seq for e in net.stored[b]] == [0]
    # each replica forwarded once to the other; the duplicate stopped there
    assert sum(1 for _, _, m in net.sent if isinstance(m, LiveOp)) == 4


def test_live_op_after_a_gap_triggers_a_sync(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, _b = net.ids
    net.connect_all()
    net.run_until(lambda: not any(s.running() for s in net.syncs.values()))
    for i in range(5):
        append(net.stores[0], net.keys[0], "l", b"%d" % i, i)  # not pushed
    _stored, effects = net.append(a, "l", b"5", 5)
    net.apply(a, effects)
    net.pump()
    assert net.stores[1].head(a, "l") is None  # seq 5 does not follow: not stored yet
    net.run_until(lambda: net.stores[1].counts().operations == 6, max_time=net.now + 5)


def test_gossip_buffer_holds_during_session_and_replays(registry: ContainerRegistry) -> None:
    cfg = dataclasses.replace(CFG, gossip_buffer_ops=3)
    net = Net(2, registry, cfg)
    a, b = net.ids
    for i in range(3):
        append(net.stores[0], net.keys[0], "l", b"%d" % i, i)
    # hold a's batches back so that b's session stays open
    held: list[tuple[NodeId, NodeId, Message]] = []

    def hold_batches_to_b(s: NodeId, d: NodeId, m: Message) -> bool:
        if isinstance(m, SyncBatch) and d == b:
            held.append((s, d, m))
            return True
        return False

    net.drop = hold_batches_to_b
    net.connect_all()
    net.pump()
    assert (a, "l") in net.syncs[b].running()
    sync_b = net.syncs[b]
    for i in range(4):
        _, eff = net.append(a, "l", b"live%d" % i, 10 + i)
        net.apply(a, eff)
    net.pump()
    assert len(sync_b.buffer) == 3 and sync_b.buffer.stats().rejections == 1
    assert sync_b.buffer.keys() == [(a, "l")]
    assert net.stores[1].counts().operations == 0
    # deliver the batch: the session ends, the held ops replay (in order, after the synced ones)
    net.drop = lambda s, d, m: False
    net.queue.extend(held)
    net.run_until(lambda: net.stores[1].counts().operations == 7, max_time=net.now + 10)
    assert len(sync_b.buffer) == 0 and sync_b.buffer.keys() == []
    assert [e.op.seq for e in net.stored[b]] == list(range(7))


def test_gossip_buffer_caps_ttl_and_empties(registry: ContainerRegistry) -> None:
    kp = KeyPair.from_seed(b"g" * 32)
    buf = GossipBuffer("t.buffer", 5, 2100, 10.0, registry=registry)
    peers = [KeyPair.from_seed(bytes([i + 10]) * 32).node_id for i in range(3)]
    prev = None
    ops = []
    for i in range(8):
        prev = create_operation(kp, "l", b"p" * 300, prev, i)
        ops.append(prev)
    assert buf.hold(peers[0], "l", ops[0], b"p" * 300, 0.0)
    assert buf.hold(peers[1], "l", ops[1], b"p" * 300, 1.0)
    assert buf.hold(peers[1], "m", ops[2], b"p" * 300, 2.0)
    assert buf.hold(peers[2], "l", ops[3], b"p" * 300, 3.0)
    assert not buf.hold(peers[2], "l", ops[4], b"p" * 300, 3.0)  # bytes cap (4 x ~500 + 1)
    assert buf.nbytes <= 2100 and len(buf) == 4
    assert buf.stats().rejections == 1
    assert buf.next_deadline() == 10.0
    assert buf.expire(11.5) == [(peers[0], "l"), (peers[1], "l")]
    assert len(buf) == 2 and set(buf.keys()) == {(peers[1], "m"), (peers[2], "l")}
    assert buf.release(peers[1], "m")[0][0] == ops[2]
    assert buf.keys() == [(peers[2], "l")]
    buf.expire(100.0)
    assert buf.keys() == [] and len(buf) == 0 and buf.nbytes == 0 and buf.next_deadline() is None
    assert buf.stats().expirations == 3
    with pytest.raises(ValueError):
        GossipBuffer("t.bad", 0, 1, 1.0, registry=registry)


def test_gossip_buffer_ttl_expiry_marks_pair_for_resync(registry: ContainerRegistry) -> None:
    cfg = dataclasses.replace(CFG, gossip_buffer_ttl=1.0, sync_timeout=50.0)
    net = Net(2, registry, cfg)
    a, b = net.ids
    net.drop = lambda s, d, m: isinstance(m, SyncBatch) and d == b
    net.connect_all()
    net.pump()
    _, eff = net.append(a, "l", b"x", 1)
    net.apply(a, eff)
    net.pump()
    assert len(net.syncs[b].buffer) == 1
    net.run_until(lambda: len(net.syncs[b].buffer) == 0, max_time=net.now + 2)
    assert net.syncs[b].buffer.stats().expirations == 1
    net.drop = lambda s, d, m: False
    net.run_until(lambda: net.stores[1].counts().operations == 1, max_time=200)


def test_disconnect_cleans_up_and_interest_is_capped(registry: ContainerRegistry) -> None:
    cfg = dataclasses.replace(CFG, max_interests=2)
    net = Net(2, registry, cfg)
    a, b = net.ids
    net.drop = lambda s, d, m: isinstance(m, SyncBatch)
    net.connect_all()
    net.pump()
    sync_b = net.syncs[b]
    _, eff = net.append(a, "l", b"x", 1)
    net.apply(a, eff)
    net.pump()
    assert sync_b.running() and len(sync_b.buffer) == 1
    net.apply(b, sync_b.peer_disconnected(a, net.now))
    assert sync_b.running() == [] and len(sync_b.buffer) == 0
    assert net.stores[1].counts().operations == 1  # the held op was valid: replayed, not lost
    deadline = sync_b.next_deadline()
    assert deadline is None or deadline >= net.now
    sync_b.interest("m", [a])
    with pytest.raises(LimitExceeded):
        sync_b.interest("n", [a])
    sync_b.uninterest("m")
    sync_b.interest("n", [a])


def test_sessions_start_in_the_order_the_peers_were_given(registry: ContainerRegistry) -> None:
    # a log's peers were walked as a frozenset of node ids, whose order differs by process (a
    # msgspec struct's hash includes its type's address): the simulator's log runs were not
    # reproducible from their seed. Now the order is the caller's, and a removal's is sorted.
    net = Net(9, registry)
    me, *peers = net.ids
    sync = net.syncs[me]
    for p in peers:
        sync.peer_connected(p, 0.0)
    for i, order in enumerate((peers, peers[::-1], sorted(peers))):
        now = 10.0 * (i + 1)
        sync.uninterest("l", now)
        out = execute(sync, net.store_of[me], sync.interest("l", order, now), now)
        asked = [o.peer for o in out if isinstance(o, Send) and isinstance(o.message, SyncRequest)]
        assert asked == order
    sync.interest("l", peers[::2], 50.0)
    assert sorted(sync.interests()["l"]) == sorted(peers[::2])


def test_server_refuses_logs_it_does_not_sync(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    eff = net.syncs[a].handle_message(b, SyncRequest(sid=1, log="secret", heads=[]), 0.0)
    assert len(eff) == 1 and isinstance(eff[0], Send) and isinstance(eff[0].message, SyncBatch)
    assert eff[0].message.refused and eff[0].message.ops == []


def test_decoded_ops_roundtrip_through_messages(registry: ContainerRegistry) -> None:
    kp = KeyPair.from_seed(b"z" * 32)
    op = create_operation(kp, "l", b"p", None, 1)
    msg = CODEC.decode(CODEC.encode(LiveOp(op=encode_operation(op), payload=b"p")))
    assert isinstance(msg, LiveOp) and decode_operation(msg.op) == op


def test_peer_churn_leaves_nothing_behind(registry: ContainerRegistry) -> None:
    """1,000 peers connect, push live ops, time out or disconnect: every structure stays within
    its cap while it happens and is empty afterwards."""
    cfg = dataclasses.replace(CFG, max_sync_sessions=4, max_sync_pairs=64, gossip_buffer_ops=50)
    me = KeyPair.from_seed(b"M" * 32)
    store = MemoryStore(cfg, registry=registry)
    sync = LogSync(me, cfg, Random(9), registry)

    def run(outputs: list[LogOutput]) -> list[LogOutput]:
        return execute(sync, store, outputs, now)

    writer = KeyPair.from_seed(b"W" * 32)
    ops = []
    prev = None
    for i in range(20):
        prev = create_operation(writer, "l", b"w%d" % i, prev, i)
        ops.append(prev)
    peers = [KeyPair.from_seed(i.to_bytes(2, "big") * 16).node_id for i in range(1000)]
    sync.interest("l", peers, 0.0)
    now = 0.0
    live: list[NodeId] = []
    for i, peer in enumerate(peers):
        now += 0.5
        effects = run(sync.peer_connected(peer, now))
        assert all(isinstance(e, Send) and isinstance(e.message, SyncRequest) for e in effects)
        live.append(peer)
        op = ops[i % 20]
        run(sync.on_live_operation(peer, op, b"w%d" % op.seq, now))
        run(sync.handle_timer(now))
        assert len(sync.running()) <= 4
        assert len(sync.buffer) <= 50
        for c in registry.snapshot():
            assert c.size <= c.capacity, c
        if len(live) > 100:
            run(sync.peer_disconnected(live.pop(0), now))
    for peer in live:
        run(sync.peer_disconnected(peer, now))
    assert sync.running() == [] and len(sync.buffer) == 0 and sync.buffer.keys() == []
    sizes = {c.name: c.size for c in registry.snapshot() if c.name.startswith("logsync.")}
    assert sizes["logsync.pairs"] == 0 and sizes["logsync.sessions"] == 0 and sizes["logsync.gossip_buffer"] == 0
    assert sizes["logsync.store_requests"] == 0 and sync.in_flight() == 0
    assert sync.next_deadline() is None
    # the live ops that were valid and in order were stored, none twice
    assert store.head(writer.node_id, "l") is not None
    sync.close()


def test_sqlite_and_memory_replicas_converge(registry: ContainerRegistry, tmp_path: Path) -> None:
    from quicmesh.store import SqliteStore

    stores: list[Store] = [SqliteStore(tmp_path / "a.db", CFG, registry=registry), MemoryStore(CFG, registry=registry)]
    net = Net(2, registry, stores=stores)
    _a, b = net.ids
    for i in range(150):
        append(stores[0], net.keys[0], "l", b"a%d" % i, i)
    for i in range(70):
        append(stores[1], net.keys[1], "l", b"b%d" % i, i, prune=(i == 40))
    net.connect_all()
    net.run_until(lambda: not net.queue and not any(s.running() for s in net.syncs.values()))
    assert same_logs(stores[0], stores[1])
    assert stores[0].low(b, "l") == 40 and stores[0].counts().operations == 150 + 30
    _, eff = net.append(b, "l", b"live", 999)
    net.apply(b, eff)
    net.settle()
    assert stores[0].get(b, "l", 70) is not None
    stores[0].close()


def test_store_requests_in_flight_are_capped(registry: ContainerRegistry) -> None:
    """At ``max_requests`` in flight: a served request is dropped, a live operation is dropped
    (its pair made due), a local append raises; all counted, visible in the registry."""
    cfg = dataclasses.replace(CFG, max_sync_sessions=1)
    me = KeyPair.from_seed(b"C" * 32)
    store = MemoryStore(cfg, registry=registry)
    sync = LogSync(me, cfg, Random(3), registry, max_requests=2)
    writer = KeyPair.from_seed(b"W" * 32)
    peer = writer.node_id
    sync.interest("l", [peer], 0.0)
    sync.interest("m", [peer], 0.0)
    session = sync.peer_connected(peer, 0.0)  # one session (l): its heads read is in flight
    assert len(session) == 1 and isinstance(session[0], StoreRead) and sync.in_flight() == 1
    serve = sync.handle_message(peer, SyncRequest(sid=7, log="l", heads=[]), 0.0)
    assert len(serve) == 1 and isinstance(serve[0], StoreRead) and sync.in_flight() == 2
    # full
    assert sync.handle_message(peer, SyncRequest(sid=8, log="l", heads=[]), 0.0) == []
    with pytest.raises(LimitExceeded):
        sync.append("l", b"x", now=0.0, now_us=1)
    live = create_operation(writer, "m", b"live", None, 1)
    assert sync.on_live_operation(peer, live, b"live", 0.0) == []  # not ingested: pulled later
    assert sync.requests_dropped == 3 and store.counts().operations == 0
    (stats,) = [c for c in registry.snapshot() if c.name == "logsync.store_requests"]
    assert stats.size == 2 and stats.capacity == 2 and stats.rejections == 3
    # the requests in flight complete normally, and then there is room again
    sent = execute(sync, store, session + serve, 0.0)
    assert [type(o.message) for o in sent if isinstance(o, Send)] == [SyncRequest, SyncBatch]
    assert sync.in_flight() == 0
    req_id, outs = sync.append("l", b"x", now=0.0, now_us=1)
    assert any(isinstance(o, Appended) and o.req_id == req_id for o in execute(sync, store, outs, 0.0))


def test_session_timing_out_while_its_ingest_is_in_flight(registry: ContainerRegistry) -> None:
    """The late result of a batch's ingest is still delivered, but the ended session asks nothing."""
    net = Net(2, registry)
    a, b = net.ids
    for i in range(3):
        append(net.stores[0], net.keys[0], "l", b"%d" % i, i)
    sync_a, sync_b = net.syncs[a], net.syncs[b]
    sync_a.interest("l", [b], 0.0)
    sync_b.interest("l", [a], 0.0)
    (request,) = execute(sync_b, net.stores[1], sync_b.peer_connected(a, 0.0), 0.0)
    assert isinstance(request, Send) and isinstance(request.message, SyncRequest)
    (batch,) = execute(sync_a, net.stores[0], sync_a.handle_message(b, request.message, 0.0), 0.0)
    assert isinstance(batch, Send) and isinstance(batch.message, SyncBatch) and len(batch.message.ops) == 3
    (ingest,) = sync_b.handle_message(a, batch.message, 1.0)
    assert isinstance(ingest, StoreWrite) and sync_b.running() == [(a, "l")]
    assert sync_b.handle_timer(100.0) == [] and sync_b.running() == [] and sync_b.sessions_failed == 1
    done = sync_b.store_done(ingest.req_id, ingest.query.run(net.stores[1]), 100.0)
    assert [type(o) for o in done] == [OperationStored] * 3
    assert sync_b.in_flight() == 0 and sync_b.store_done(ingest.req_id, None, 100.0) == []


def test_ahead_of_the_clock_is_refused_without_penalty_then_accepted_once_time_passed(
    registry: ContainerRegistry,
) -> None:
    """An operation stamped beyond the receiver's clock plus ``max_clock_skew`` is not stored
    and not held against the peer that relays it (its clock may differ); once the receiver's
    clock caught up, pull sync stores it."""
    net = Net(2, registry)
    a, b = net.ids
    skew_us = int(CFG.max_clock_skew * 1_000_000)
    for i in range(3):  # stamped 100 s beyond what b accepts at t=0 (b's wall clock is t)
        append(net.stores[0], net.keys[0], "l", b"%d" % i, skew_us + 100_000_000 + i)
    net.connect_all()
    net.run_until(lambda: net.syncs[b].ops_ahead >= 1 and not net.syncs[b].running())
    assert net.stores[1].head(a, "l") is None
    assert net.syncs[b].invalid_ops == 0 and net.disconnects == []
    net.run_until(lambda: net.stores[1].heads("l") == net.stores[0].heads("l"), max_time=1_000.0)
    assert net.now >= 100.0 and net.disconnects == []


def test_operations_of_another_realm_count_against_the_sender(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    net.connect_all()
    net.settle()
    for i in range(CFG.max_invalid_ops):
        op = create_operation(net.keys[0], "l", b"x", None, i, realm="elsewhere")
        net.apply(b, net.syncs[b].handle_message(a, LiveOp(op=encode_operation(op), payload=b"x"), net.now))
    assert net.syncs[b].ops_foreign_realm == CFG.max_invalid_ops and net.stores[1].counts().operations == 0
    assert net.disconnects == [(b, a, "invalid_operations")]
