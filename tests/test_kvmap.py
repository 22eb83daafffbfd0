"""The LWW map: deterministic winners, tombstones, convergence in any order, sync end to end."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import StoreConfig
from quicmesh.core.kvmap import KvMap, Stamp, decode_entry, encode_delete, encode_set
from quicmesh.core.logsync import LogSync, OperationStored
from quicmesh.core.oplog import Operation, create_operation
from quicmesh.errors import LimitExceeded
from quicmesh.identity import KeyPair
from quicmesh.store import MemoryStore, append

AUTHORS = [KeyPair.from_seed(bytes([i + 40]) * 32) for i in range(3)]


def entry_of(payload: bytes) -> tuple[str, bytes | None]:
    """``decode_entry`` of a payload the test wrote: always a map entry."""
    entry = decode_entry(payload)
    assert entry is not None
    return entry


def test_later_timestamp_wins_then_author_then_seq() -> None:
    a, b = sorted(AUTHORS[:2], key=lambda k: k.node_id.raw)
    m = KvMap("kv")
    op_a = create_operation(a, "kv", encode_set("k", b"A"), None, 100)
    op_b = create_operation(b, "kv", encode_set("k", b"B"), None, 100)
    assert m.apply(op_b, encode_set("k", b"B"))
    assert not m.apply(op_a, encode_set("k", b"A"))  # same timestamp, smaller author loses
    assert m.get("k") == b"B"
    op_a2 = create_operation(a, "kv", encode_set("k", b"A2"), op_a, 101)
    assert m.apply(op_a2, encode_set("k", b"A2"))
    assert m.get("k") == b"A2" and m.stamp("k") == Stamp(101, a.node_id.raw, 1)
    # delete leaves a tombstone that an older set cannot undo
    op_del = create_operation(b, "kv", encode_delete("k"), op_b, 200)
    assert m.apply(op_del, encode_delete("k"))
    assert "k" not in m and m.get("k") is None and len(m) == 0 and m.tombstones == 1
    old = create_operation(a, "kv", encode_set("k", b"old"), op_a2, 150)
    assert not m.apply(old, encode_set("k", b"old"))
    assert m.get("k", b"dflt") == b"dflt"
    # same author, same microsecond: the later seq wins
    op_a4 = create_operation(a, "kv", encode_set("k", b"A4"), old, 300)
    op_a5 = create_operation(a, "kv", encode_set("k", b"A5"), op_a4, 300)
    m.apply(op_a5, encode_set("k", b"A5"))
    m.apply(op_a4, encode_set("k", b"A4"))
    assert m.get("k") == b"A5"
    assert m.items() == [("k", b"A5")]


def test_malformed_payloads_and_other_logs_are_ignored() -> None:
    m = KvMap("kv")
    op = create_operation(AUTHORS[0], "kv", b"\xff\xfe", None, 1)
    assert not m.apply(op, b"\xff\xfe") and m.malformed == 1
    other = create_operation(AUTHORS[0], "other", encode_set("k", b"v"), None, 1)
    assert not m.apply(other, encode_set("k", b"v")) and len(m) == 0
    assert decode_entry(encode_set("k", b"v")) == ("k", b"v")
    assert decode_entry(encode_delete("k")) == ("k", None)
    assert decode_entry(b"") is None


def test_key_cap() -> None:
    m = KvMap("kv", max_keys=2)
    prev: Operation | None = None
    for i in range(3):
        p = encode_set(f"k{i}", b"v")
        prev = create_operation(AUTHORS[0], "kv", p, prev, i)
        m.apply(prev, p)
    assert len(m) == 2 and m.refused == 1
    registry = ContainerRegistry("kv")
    r = KvMap("kv", max_keys=2, registry=registry)
    for i in range(3):
        p = encode_set(f"k{i}", b"v")
        r.apply(create_operation(AUTHORS[0], "kv", p, None, i), p)
    [entries] = registry.snapshot()  # the keys held show in /metrics, refusals counted
    got = (entries.name, entries.kind, entries.size, entries.capacity, entries.rejections)
    assert got == ("kv.entries", "dict", 2, 2, 1)
    m.check_room("k0")
    with pytest.raises(LimitExceeded):
        m.check_room("k9")


_writes = st.lists(
    st.tuples(
        st.integers(0, 2),  # author
        st.sampled_from(["a", "b", "c", "d"]),  # key
        st.one_of(st.none(), st.binary(max_size=3)),  # value or delete
        st.integers(0, 5),  # timestamp: small range for many ties
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(writes=_writes, seed=st.integers(0, 2**32))
def test_any_order_converges(writes: list[tuple[int, str, bytes | None, int]], seed: int) -> None:
    prev: dict[int, Operation | None] = {0: None, 1: None, 2: None}
    ops: list[tuple[Operation, bytes]] = []
    for author, key, value, ts in writes:
        payload = encode_delete(key) if value is None else encode_set(key, value)
        op = create_operation(AUTHORS[author], "kv", payload, prev[author], ts)
        prev[author] = op
        ops.append((op, payload))
    reference = KvMap("kv")
    for op, payload in ops:
        reference.apply(op, payload)
    rng = Random(seed)
    for _ in range(3):
        shuffled = ops[:]
        rng.shuffle(shuffled)
        m = KvMap("kv")
        for op, payload in shuffled + shuffled[: len(shuffled) // 2]:  # duplicates too
            m.apply(op, payload)
        assert m.snapshot() == reference.snapshot()
        assert m.items() == reference.items()
    # the winner of each key is the write with the greatest (timestamp, author, seq)
    for key in {k for _, k, _, _ in writes}:
        best = max(
            ((op, p) for op, p in ops if entry_of(p)[0] == key),
            key=lambda t: (t[0].header.timestamp, t[0].header.author, t[0].header.seq),
        )
        assert reference.get(key) == entry_of(best[1])[1]


def test_replicas_converge_through_log_sync(registry: ContainerRegistry) -> None:
    from test_logsync import Net  # the in-memory exchange (tests/ is on sys.path under pytest)

    net = Net(3, registry)
    maps = {i: KvMap("kv") for i in net.ids}
    net.connect_all("kv")
    net.run_until(lambda: not any(s.running() for s in net.syncs.values()))
    rng = Random(5)
    for step in range(60):
        i = rng.randrange(3)
        me = net.ids[i]
        key = rng.choice("xyz")
        payload = encode_delete(key) if rng.random() < 0.2 else encode_set(key, b"%d" % step)
        _, eff = net.append(me, "kv", payload, 1000 + step // 3)
        net.apply(me, eff)
        if rng.random() < 0.5:
            net.pump()
    net.settle()
    for me in net.ids:
        for e in net.stored[me]:
            assert isinstance(e, OperationStored)
            maps[me].apply(e.op, e.payload)
    snaps = [maps[i].snapshot() for i in net.ids]
    assert snaps[0] == snaps[1] == snaps[2] and snaps[0]
    # a fresh replica rebuilt from a store agrees too
    rebuilt = KvMap("kv")
    assert rebuilt.load(net.stores[0], batch=7) == 60
    assert rebuilt.snapshot() == snaps[0]


def test_load_reads_in_batches(registry: ContainerRegistry) -> None:
    store = MemoryStore(StoreConfig(), registry=registry)
    for i in range(10):
        append(store, AUTHORS[0], "kv", encode_set(f"k{i % 4}", b"%d" % i), i)
    m = KvMap("kv")
    assert m.load(store, batch=3) == 10
    assert m.items() == [("k0", b"8"), ("k1", b"9"), ("k2", b"6"), ("k3", b"7")]
    from test_logsync import sync_append

    sync = LogSync(AUTHORS[1], StoreConfig(), Random(1), registry)
    own = MemoryStore(StoreConfig(), registry=registry)
    stored, effects = sync_append(sync, own, "kv", encode_set("z", b"1"), now=0.0, now_us=5)
    assert m.apply(stored.op, stored.payload) and m.get("z") == b"1"
    assert any(isinstance(e, OperationStored) for e in effects)
