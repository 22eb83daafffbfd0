"""Logs and maps under attack (#11): hostile timestamps, operations of another realm, Sybil
authors filling the store, and a writer's own invalid operation.

Every test prints and asserts a figure. The hostile peer is a member node of the realm that
sends hand-made operations (signed by keys it controls) over the ordinary wire protocol
(``l.live`` messages through the node's transport), over the in-memory network and over real
QUIC on loopback.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig, StoreConfig, TransportConfig
from quicmesh.core.effects import Send
from quicmesh.core.kvmap import KvMap, encode_set
from quicmesh.core.log_effects import Appended, AppendLocal, IngestOps, StoreWrite
from quicmesh.core.log_messages import LiveOp
from quicmesh.core.logsync import LogSync
from quicmesh.core.oplog import MAX_TIMESTAMP, Acceptance, Operation, create_operation, encode_operation
from quicmesh.core.store_api import IngestResult, Store
from quicmesh.errors import ForeignRealm, InvalidOperation, LimitExceeded, OperationTooLarge, TimestampAhead
from quicmesh.identity import KeyPair
from quicmesh.runtime.memory import MemoryNetwork
from quicmesh.runtime.node import Node
from quicmesh.store import MemoryStore
from quicmesh.store.sqlite import SqliteStore
from quicmesh.testing.wait import eventually

REALM = "sec"
MAP = "config"
# Idle timeout 15 s: links of 3 s dropped on a loaded CI machine.
FAST = TransportConfig(handshake_timeout=10.0, idle_timeout=15.0, keepalive_interval=0.5)


def now_us() -> int:
    return time.time_ns() // 1000


def hostile_op(seed: int, key: str, value: bytes, ts: int, realm: str = REALM) -> tuple[Operation, bytes]:
    """An operation of the map, signed by a key the attacker controls, stamped ``ts``."""
    kp = KeyPair.from_seed(bytes([seed]) * 32)
    payload = encode_set(key, value)
    return create_operation(kp, MAP, payload, None, ts, realm=realm), payload


def send_live(hostile: Node, to: Node, op: Operation, payload: bytes) -> None:
    """``hostile`` pushes ``op`` to ``to`` as a live operation (an ``l.live`` frame)."""
    hostile._run([Send(to.id, LiveOp(op=encode_operation(op), payload=payload))])


@pytest.fixture(params=["memory", "quic"])
async def mesh(request: pytest.FixtureRequest) -> AsyncIterator[list[Node]]:
    """Three honest nodes and a hostile member (the last), all connected to the first."""
    net = MemoryNetwork() if request.param == "memory" else None
    nodes: list[Node] = []
    try:
        for i in range(4):
            boot = (nodes[0].address,) if nodes else ()
            cfg = NodeConfig(realm=REALM, bootstrap=boot, transport=FAST)
            nodes.append(await Node.start(cfg, network=net))
            if i:
                await eventually(lambda: nodes[0].id in nodes[-1].peers() and nodes[-1].id in nodes[0].peers())
        yield nodes
    finally:
        for n in reversed(nodes):
            await n.stop()


def all_connected(nodes: list[Node]) -> bool:
    return all(p.id in n.peers() for n in nodes for p in nodes if p is not n)


def differing_keys(snaps: list[dict[str, object]]) -> int:
    keys = set().union(*snaps)
    return sum(1 for k in keys if len({repr(s.get(k)) for s in snaps}) > 1)


async def test_hostile_timestamps_are_refused_and_replicas_stay_identical(mesh: list[Node]) -> None:
    *honest, hostile = mesh
    maps = [await n.kv(MAP) for n in honest]
    hmap = await hostile.kv(MAP)  # the attacker is an interested member of the map
    await eventually(lambda: all_connected(mesh))
    await eventually(lambda: all(n.id in m.logs._sharing(MAP) for m in mesh for n in mesh if n is not m))
    t = now_us()
    far = [
        hostile_op(101, "colour", b"hostile-max", MAX_TIMESTAMP),  # wins its key forever, formerly
        hostile_op(102, "size", b"hostile-1h", t + 3_600_000_000),  # one hour ahead
    ]
    near = hostile_op(103, "near", b"hostile-near", t + 60_000_000)  # within the 5-minute skew
    for n in honest:
        for op, p in [*far, near]:
            send_live(hostile, n, op, p)
    await eventually(lambda: all(n.logs.sync is not None and n.logs.sync.ops_ahead >= 2 for n in honest))
    await eventually(lambda: all("near" in m for m in maps))
    # honest writes afterwards, on every key the attacker touched
    await maps[0].set("colour", b"red")
    await maps[1].set("size", b"L")
    await maps[2].set("near", b"honest")
    await maps[1].set("colour", b"blue")
    def snaps() -> list[dict[str, object]]:
        return [m.snapshot() for m in maps]

    await eventually(lambda: differing_keys(snaps()) == 0 and len(maps[0].snapshot()) == 3)
    diff = differing_keys(snaps())
    refused = [n.logs.sync.ops_ahead if n.logs.sync else 0 for n in honest]
    stored_far = sum(
        1 for n in honest for op, _ in far if n.logs.store and n.logs.store.head(op.author, MAP) is not None
    )
    disconnected = [p.id for n in honest for p in honest if p is not n and p.id not in n.peers()]
    invalid = [n.logs.sync.invalid_ops if n.logs.sync else -1 for n in honest]
    print(
        f"hostile timestamps: {stored_far} of {len(far) * len(honest)} far-ahead operations stored; refused (counted)"
        f" per node {refused}; differing keys across {len(maps)} replicas: {diff};"
        f" honest links lost: {len(disconnected)}; violations counted against honest peers: {invalid}"
    )
    assert stored_far == 0 and all(r >= len(far) for r in refused)
    assert diff == 0 and disconnected == [] and invalid == [0, 0, 0]
    values = {k: v for k, (_, v) in maps[0].snapshot().items()}
    assert values == {"colour": b"blue", "size": b"L", "near": b"honest"}
    assert all(n.health()["logs"]["ops_ahead_total"] >= len(far) for n in honest)
    await hmap.close()
    for m in maps:
        await m.close()


async def test_operations_of_another_realm_are_refused(mesh: list[Node]) -> None:
    *honest, hostile = mesh
    maps = [await n.kv(MAP) for n in honest]
    hmap = await hostile.kv(MAP)
    await eventually(lambda: hostile.id in honest[0].logs._sharing(MAP))
    t = now_us()
    foreign = [hostile_op(110 + i, f"k{i}", b"other realm", t, realm="another-realm") for i in range(2)]
    for op, p in foreign:
        send_live(hostile, honest[0], op, p)
    sync = honest[0].logs.sync
    assert sync is not None
    await eventually(lambda: sync.ops_foreign_realm >= len(foreign))
    store = honest[0].logs.store
    assert store is not None
    stored = sum(1 for op, _ in foreign if store.head(op.author, MAP) is not None)
    print(
        f"foreign realm: {stored} of {len(foreign)} operations of another realm stored;"
        f" refused and counted: {sync.ops_foreign_realm}; violations against the relay: {sync.invalid_ops}"
    )
    assert stored == 0 and len(maps[0]) == 0
    assert sync.ops_foreign_realm == len(foreign) and sync.invalid_ops == len(foreign)
    assert honest[0].health()["logs"]["ops_foreign_realm_total"] == len(foreign)
    await hmap.close()
    for m in maps:
        await m.close()


def test_an_honest_write_over_a_stamp_at_the_field_limit_is_valid_everywhere(registry: ContainerRegistry) -> None:
    """The map rule: a winning stamp beyond the writer's clock plus the skew (here 2^63-1, stored
    by an earlier release) is no floor; the write is stamped with the writer's clock, and every
    peer stores it."""
    writer = MemoryStore(StoreConfig(), registry=registry)
    peer = MemoryStore(StoreConfig(), registry=registry)
    op, p = hostile_op(120, "colour", b"hostile", MAX_TIMESTAMP)
    assert writer.ingest(op, p) is IngestResult.STORED  # no acceptance: as stored before this release
    kv = KvMap(MAP, registry=registry)
    kv.apply(op, p)
    assert kv.floor("colour") == MAX_TIMESTAMP  # saturated, never 2^63
    me = KeyPair.from_seed(b"w" * 32)
    refused = 0
    for i in range(100):
        t = 1_700_000_000_000_000 + i
        accept = Acceptance.at(REALM, t, 300.0)
        payload = encode_set("colour", b"honest-%d" % i)
        stored = AppendLocal(me, MAP, payload, t, kv.floor("colour"), accept=accept).run(writer)
        assert stored.op.timestamp == t
        try:
            peer.ingest(stored.op, payload, accept=Acceptance.at(REALM, t, 300.0))
        except InvalidOperation:
            refused += 1
    print(f"field limit: {refused} of 100 honest writes over a 2^63-1 stamp refused by a peer")
    assert refused == 0


def _sybil_run(store: Store, authors: int, per_author: int) -> tuple[int, int, int]:
    """1,000 foreign authors write (through the node's ingest query) until the store is full,
    while this node appends (through its append query). Returns local append failures, local
    appends, foreign operations stored."""
    me = KeyPair.from_seed(b"m" * 32)
    accept = Acceptance.at(REALM, 1_800_000_000_000_000, 300.0)
    failures = appends = stored = 0
    rng = Random(11)
    for a in range(authors):
        kp = KeyPair.from_seed(a.to_bytes(4, "big") * 8)
        prev: Operation | None = None
        ops: list[tuple[Operation, bytes]] = []
        for i in range(per_author):
            payload = rng.randbytes(64)
            prev = create_operation(kp, "spam", payload, prev, 1_700_000_000_000_000 + i, realm=REALM)
            ops.append((prev, payload))
        results = IngestOps(tuple(ops), allow_gap=False, accept=accept).run(store)
        stored += sum(1 for r in results if r is IngestResult.STORED)
        try:
            AppendLocal(me, "mine", b"local %d" % a, 1_700_000_000_000_000 + a, accept=accept).run(store)
            appends += 1
        except (LimitExceeded, InvalidOperation):
            failures += 1
    return failures, appends, stored


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_sybil_authors_never_make_local_appends_fail(kind: str, tmp_path: Path, registry: ContainerRegistry) -> None:
    cfg = StoreConfig(max_operations=2_000, max_logs=5_000, max_ops_per_author=5, max_bytes_per_author=64 * 1024)
    store: Store
    if kind == "memory":
        store = MemoryStore(cfg, registry=registry)
    else:
        store = SqliteStore(tmp_path / "s.db", cfg, registry=registry)
    try:
        failures, appends, stored = _sybil_run(store, authors=1_000, per_author=6)
        c = store.counts()
        me = KeyPair.from_seed(b"m" * 32).node_id
        head = store.head(me, "mine")
        print(
            f"sybil ({kind}): 1,000 foreign authors, {stored} foreign operations stored, store full at"
            f" {c.operations}/{cfg.max_operations}; local append failures: {failures} of {appends + failures};"
            f" foreign operations evicted: {c.evicted_ops} ({c.evicted_logs} logs); quota refusals: {c.quota_refused}"
        )
        assert failures == 0 and appends == 1_000
        assert head is not None and head.seq == 999 and store.low(me, "mine") == 0
        assert c.operations <= cfg.max_operations and c.evicted_ops > 0 and c.evicted_logs > 0
        assert c.quota_refused >= 1  # the sixth operation of an author with room in the store
        assert all(n <= cfg.max_ops_per_author for (a, _), n in _per_author(store).items() if a != me)
    finally:
        store.close()


def _per_author(store: Store) -> dict[tuple[object, str], int]:
    out: dict[tuple[object, str], int] = {}
    for (author, log), hi in store.heads().items():
        out[(author, log)] = hi - (store.low(author, log) or 0) + 1
    return out


async def test_the_writers_own_invalid_operation_raises_and_changes_nothing(mesh: list[Node]) -> None:
    a, b = mesh[0], mesh[1]
    ma, mb = await a.kv(MAP), await b.kv(MAP)
    await eventually(lambda: b.id in a.logs._sharing(MAP) and a.id in b.logs._sharing(MAP))
    await ma.set("k", b"v1")
    await eventually(lambda: mb.snapshot() == ma.snapshot() and "k" in mb)
    assert a.logs.store is not None
    before = (ma.snapshot(), a.logs.store.counts().operations, a.logs.heads(MAP))
    real = a.logs.clock_us
    a.logs.clock_us = lambda: real() + 3_600_000_000  # this node's clock an hour ahead
    raised = 0
    for i in range(10):
        try:
            await ma.set("k", b"from the future %d" % i)
        except TimestampAhead:
            raised += 1
    a.logs.clock_us = real
    try:
        await ma.set("k", b"x" * (a.config.store.max_operation_size + 1))
    except OperationTooLarge:
        raised += 1
    after = (ma.snapshot(), a.logs.store.counts().operations, a.logs.heads(MAP))
    await ma.set("k", b"v2")  # the clock is right again: the writes go on, the replicas agree
    await eventually(lambda: mb.snapshot() == ma.snapshot() and ma.snapshot()["k"][1] == b"v2")
    print(f"own invalid writes: {raised} of 11 raised; local replica changed by them: {after != before}")
    assert raised == 11 and after == before
    assert b.logs.sync is not None and b.logs.sync.ops_ahead == 0  # nothing was sent
    await ma.close()
    await mb.close()


def test_a_too_large_append_through_the_core_stores_nothing(registry: ContainerRegistry) -> None:
    """The core's append (below the runtime's own size check) is validated exactly as peers
    validate: the error goes to the appender, the store is untouched."""
    cfg = StoreConfig(max_operation_size=100)
    me = KeyPair.from_seed(b"c" * 32)
    sync = LogSync(me, cfg, Random(1), registry, realm=REALM, wall_offset=1_700_000_000.0)
    store = MemoryStore(cfg, registry=registry)
    outcomes: list[Appended] = []
    for payload, ts in ((b"x" * 101, 1_700_000_000_000_000), (b"ok", 1_700_000_000_000_000 + 3_600_000_000)):
        req_id, outs = sync.append(MAP, payload, now=0.0, now_us=ts)
        for o in outs:
            assert isinstance(o, StoreWrite) and isinstance(o.query, AppendLocal)
            try:
                result: object = o.query.run(store)
            except Exception as exc:
                result = exc
            outcomes += [e for e in sync.store_done(req_id, result, 0.0) if isinstance(e, Appended)]
    errors = [type(o.error).__name__ for o in outcomes]
    stored = store.counts().operations
    print(f"core appends: {len(outcomes)} invalid appends answered {errors}; operations stored: {stored}")
    assert errors == ["OperationTooLarge", "TimestampAhead"] and store.counts().operations == 0
    assert not isinstance(outcomes[0].error, ForeignRealm)


async def test_sybil_authors_through_a_node_never_make_its_appends_fail() -> None:
    """The same over the node API: a peer serves 30 authors' logs into a small store; the
    node's own appends all succeed, evicting foreign logs, and its heads stay the store's."""
    from quicmesh.store import append as store_append

    net = MemoryNetwork()
    caps = StoreConfig(max_operations=60, max_ops_per_author=5)
    a = await Node.start(NodeConfig(realm=REALM, store=caps), network=net)
    b = await Node.start(NodeConfig(realm=REALM, bootstrap=(a.address,)), network=net)
    try:
        assert b.logs.store is not None and a.logs.store is not None
        for k in range(30):
            kp = KeyPair.from_seed(bytes([k + 40]) * 32)
            for i in range(10):
                store_append(b.logs.store, kp, "flood", b"f" * 100, now_us() - 1_000_000 + i, realm=REALM)
        la, lb = a.log("flood"), b.log("flood")
        await eventually(lambda: a.logs.store is not None and a.logs.store.counts().operations >= 55)
        failures = 0
        for i in range(40):
            try:
                await la.append(b"mine-%d" % i)
            except LimitExceeded:
                failures += 1
        c = a.logs.store.counts()
        mirror = la.heads()
        truth = {author: hi for (author, _), hi in a.logs.store.heads("flood").items()}
        print(
            f"sybil via sync: local append failures {failures} of 40; foreign operations evicted {c.evicted_ops}"
            f" ({c.evicted_logs} logs); quota refusals {c.quota_refused}; store {c.operations}/{caps.max_operations}"
        )
        assert failures == 0 and c.evicted_ops > 0 and c.operations <= caps.max_operations
        await eventually(lambda: la.heads() == {au: hi for (au, _), hi in a.logs.store.heads("flood").items()}
                         if a.logs.store else False)
        assert mirror.get(a.id) == truth.get(a.id) == 39
        assert a.health()["store"]["evicted_ops_total"] == c.evicted_ops
        await la.close()
        await lb.close()
    finally:
        await b.stop()
        await a.stop()
