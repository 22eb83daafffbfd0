"""Both stores behind one contract: append, ingest, ranges, prune, retention, caps, policy."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import StoreConfig
from quicmesh.core.oplog import Operation, create_operation
from quicmesh.errors import BacklinkMismatch, LimitExceeded, PayloadMismatch, SeqGap, SignatureMismatch
from quicmesh.identity import KeyPair
from quicmesh.store import IngestResult, MemoryStore, Store, append
from quicmesh.store.sqlite import SqliteStore

ME = KeyPair.from_seed(b"m" * 32)
A = KeyPair.from_seed(b"a" * 32)
B = KeyPair.from_seed(b"b" * 32)

Factory = Callable[[StoreConfig], Store]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path, registry: ContainerRegistry) -> Iterator[Factory]:
    made: list[Store] = []

    def factory(cfg: StoreConfig) -> Store:
        if request.param == "memory":
            s: Store = MemoryStore(cfg, registry=registry)
        else:
            s = SqliteStore(tmp_path / f"s{len(made)}.db", cfg, registry=registry)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def head_seq(s: Store, who: KeyPair, log: str) -> int | None:
    """The sequence number of ``who``'s ``log`` head in ``s`` (``None`` when it holds none)."""
    head = s.head(who.node_id, log)
    return None if head is None else head.seq


def ops_of(
    kp: KeyPair, n: int, log: str = "l", ts0: int = 0, prune_at: int | None = None, size: int = 10
) -> list[tuple[Operation, bytes]]:
    out = []
    prev = None
    for i in range(n):
        payload = bytes([i % 256]) * size
        op = create_operation(kp, log, payload, prev, ts0 + i, prune=(i == prune_at))
        out.append((op, payload))
        prev = op
    return out


def test_append_get_heads_range(make: Factory) -> None:
    s = make(StoreConfig())
    for i in range(5):
        append(s, ME, "notes", f"n{i}".encode(), 100 + i)
    for op, p in ops_of(A, 3, "notes"):
        assert s.ingest(op, p) is IngestResult.STORED
    for op, p in ops_of(A, 2, "other"):
        assert s.ingest(op, p) is IngestResult.STORED
    assert s.heads("notes") == {(ME.node_id, "notes"): 4, (A.node_id, "notes"): 2}
    assert len(s.heads()) == 3
    got = s.get(ME.node_id, "notes", 3)
    assert got is not None and got.payload == b"n3" and got.op.seq == 3
    assert s.get(ME.node_id, "notes", 9) is None
    batch = s.iter_range(ME.node_id, "notes", 1, 2)
    assert [x.op.seq for x in batch] == [1, 2]
    assert [x.op.seq for x in s.iter_range(ME.node_id, "notes", 3, 100)] == [3, 4]
    assert s.iter_range(B.node_id, "notes", 0, 10) == []
    c = s.counts()
    assert (c.operations, c.logs) == (10, 3) and c.bytes > 0
    assert s.is_local(ME.node_id, "notes") and not s.is_local(A.node_id, "notes")
    head = s.head(ME.node_id, "notes")
    fourth = s.get(ME.node_id, "notes", 4)
    assert head is not None and fourth is not None and head.seq == 4 and head.id == fourth.id


def test_ingest_duplicates_forks_and_invalid(make: Factory) -> None:
    s = make(StoreConfig())
    ops = ops_of(A, 4)
    for op, p in ops[:3]:
        s.ingest(op, p)
    assert s.ingest(*ops[1]) is IngestResult.DUPLICATE
    fork = create_operation(A, "l", b"fork", ops[0][0], 99)
    with pytest.raises(BacklinkMismatch):
        s.ingest(fork, b"fork")
    with pytest.raises(SeqGap):
        s.ingest(*ops_of(A, 6)[5])
    with pytest.raises(PayloadMismatch):
        s.ingest(ops[3][0], b"nope")
    forged = Operation(header=ops[3][0].header, signature=B.sign(b"x"))
    with pytest.raises(SignatureMismatch):
        s.ingest(forged, ops[3][1])
    assert s.counts().operations == 3
    assert s.ingest(*ops[3]) is IngestResult.STORED


def test_prune_flag_honoured_at_ingest_and_append(make: Factory) -> None:
    s = make(StoreConfig())
    ops = ops_of(A, 8, prune_at=5)
    for op, p in ops[:3]:
        s.ingest(op, p)
    # the prune op may follow a gap: everything before it goes
    assert s.ingest(*ops[5]) is IngestResult.STORED
    assert s.low(A.node_id, "l") == 5 and s.counts().operations == 1
    assert s.ingest(*ops[6]) is IngestResult.STORED
    assert s.ingest(*ops[2]) is IngestResult.DUPLICATE  # older than retained
    for i in range(4):
        append(s, ME, "l", b"x", i)
    append(s, ME, "l", b"p", 9, prune=True)
    assert s.low(ME.node_id, "l") == 4
    assert [x.op.seq for x in s.iter_range(ME.node_id, "l", 0, 10)] == [4]


def test_allow_gap_for_foreign_only(make: Factory) -> None:
    s = make(StoreConfig())
    ops = ops_of(A, 10)
    s.ingest(*ops[0])
    with pytest.raises(SeqGap):
        s.ingest(*ops[7])
    assert s.ingest(*ops[7], allow_gap=True) is IngestResult.STORED
    assert s.low(A.node_id, "l") == 7 and s.counts().operations == 1
    mine = [append(s, ME, "m", b"x", i) for i in range(3)]
    later = create_operation(ME, "m", b"y", mine[-1].op, 10)
    later2 = create_operation(ME, "m", b"z", later, 11)
    with pytest.raises(SeqGap):
        s.ingest(later2, b"z", allow_gap=True)  # never drops local operations


def test_prune_drop_log_and_retention(make: Factory) -> None:
    s = make(StoreConfig(max_log_length=0))
    for i in range(10):
        append(s, ME, "l", b"x", i)
    assert s.prune(ME.node_id, "l", 4) == 4
    assert s.low(ME.node_id, "l") == 4
    assert s.prune(ME.node_id, "l", 100) == 5  # never the latest
    assert s.counts().operations == 1
    append(s, ME, "l", b"x", 50)  # the chain continues
    assert head_seq(s, ME, "l") == 10
    assert s.drop_log(ME.node_id, "l") == 2
    assert s.counts().operations == 0 and s.counts().logs == 0 and s.counts().bytes == 0
    assert s.heads() == {}
    s.set_retention("r", 3)
    for op, p in ops_of(A, 7, "r"):
        s.ingest(op, p)
    assert s.low(A.node_id, "r") == 4 and s.counts().operations == 3
    for i in range(5):
        append(s, ME, "r", b"x", i)
    assert s.low(ME.node_id, "r") == 2


def test_caps_refuse_foreign_new_logs_and_evict_them_for_local_appends(make: Factory) -> None:
    s = make(StoreConfig(max_logs=2, max_operations=6))
    append(s, ME, "mine", b"x", 0)
    s.ingest(*ops_of(A, 1, "a")[0])
    assert s.ingest(*ops_of(B, 1, "b")[0]) is IngestResult.REFUSED
    # a new local log at the log cap: the foreign log is evicted, whole
    append(s, ME, "mine2", b"x", 1)
    assert s.head(A.node_id, "a") is None
    c = s.counts()
    assert (c.evicted_logs, c.evicted_ops, c.logs) == (1, 1, 2)
    for i in range(4):
        append(s, ME, "mine", b"x", i + 1)
    # 6 local operations, nothing foreign left: local append refused with a typed error, nothing lost
    with pytest.raises(LimitExceeded) as info:
        append(s, ME, "mine", b"x", 9)
    assert info.value.limit == "store.max_operations"
    assert head_seq(s, ME, "mine") == 4
    assert s.ingest(*ops_of(A, 1, "a")[0]) is IngestResult.REFUSED
    assert s.counts().operations == 6


def test_full_store_evicts_oldest_prunable_foreign_ops(make: Factory) -> None:
    s = make(StoreConfig(max_operations=10, max_log_length=0))
    s.set_retention("cache", 1000)  # makes foreign "cache" logs prunable
    for op, p in ops_of(A, 4, "cache", ts0=100):
        s.ingest(op, p)
    for op, p in ops_of(B, 4, "cache", ts0=50):
        s.ingest(op, p)
    for i in range(2):
        append(s, ME, "mine", b"x", i)
    assert s.counts().operations == 10
    append(s, ME, "mine", b"x", 3)
    # B's oldest (ts 50) went first
    assert s.low(B.node_id, "cache") == 1 and s.low(A.node_id, "cache") == 0
    for i in range(5):
        append(s, ME, "mine", b"x", 4 + i)
    # every foreign prunable log keeps its latest operation
    assert head_seq(s, A, "cache") == 3 and s.low(A.node_id, "cache") == 3
    assert s.low(B.node_id, "cache") == 3
    assert s.counts().evicted_logs == 0
    # then whole foreign logs go, least recently written first (A's), before a local append fails
    append(s, ME, "mine", b"x", 20)
    assert s.head(A.node_id, "cache") is None and head_seq(s, B, "cache") == 3
    append(s, ME, "mine", b"x", 21)
    assert s.head(B.node_id, "cache") is None
    assert (s.counts().evicted_logs, s.counts().evicted_ops) == (2, 2)
    with pytest.raises(LimitExceeded):
        append(s, ME, "mine", b"x", 22)
    assert s.counts().operations == 10
    assert head_seq(s, ME, "mine") == 9


def test_foreign_authors_are_held_to_their_quota(make: Factory) -> None:
    s = make(StoreConfig(max_ops_per_author=5, max_bytes_per_author=10_000))
    ops = ops_of(A, 8, "a")
    assert [s.ingest(op, p) for op, p in ops[:5]] == [IngestResult.STORED] * 5
    assert s.ingest(*ops[5]) is IngestResult.REFUSED
    # the quota is per author, over all its logs
    assert s.ingest(*ops_of(A, 1, "a2")[0]) is IngestResult.REFUSED
    assert s.ingest(*ops_of(B, 1, "b")[0]) is IngestResult.STORED
    big = ops_of(B, 2, "b2", size=6_000)
    assert s.ingest(*big[0]) is IngestResult.STORED
    assert s.ingest(*big[1]) is IngestResult.REFUSED  # bytes
    assert s.counts().quota_refused == 3
    # this node's own logs are not held to it
    for i in range(10):
        append(s, ME, "mine", b"x", i)
    assert head_seq(s, ME, "mine") == 9


def test_byte_cap(make: Factory) -> None:
    s = make(StoreConfig(max_bytes=2000, max_operation_size=1000))
    n = 0
    with pytest.raises(LimitExceeded) as info:
        for i in range(100):
            append(s, ME, "l", b"z" * 300, i)
            n += 1
    assert info.value.limit == "store.max_bytes"
    assert s.counts().bytes <= 2000 and s.counts().operations == n


def test_stats_registered(make: Factory, registry: ContainerRegistry) -> None:
    s = make(StoreConfig(max_logs=1))
    append(s, ME, "l", b"x", 0)
    s.ingest(*ops_of(A, 1)[0])
    stats = [c.stats() for c in registry if c.stats().kind == "store"]
    assert len(stats) == 1
    assert stats[0].size == 1 and stats[0].rejections == 1 and stats[0].peak == 1


# -- SQLite specifics --------------------------------------------------------------------------


def test_sqlite_reopen_continues_the_same_log(tmp_path: Path, registry: ContainerRegistry) -> None:
    path = tmp_path / "db.sqlite"
    s = SqliteStore(path, StoreConfig(), registry=registry)
    for i in range(3):
        append(s, ME, "l", b"x", i)
    s.set_retention("keep2", 2)
    for op, p in ops_of(A, 2):
        s.ingest(op, p)
    s.close()
    s = SqliteStore(path, StoreConfig(), registry=registry)
    assert s.counts().operations == 5 and s.counts().logs == 2
    assert s.is_local(ME.node_id, "l")
    nxt = append(s, ME, "l", b"y", 10)
    assert nxt.op.seq == 3
    s.close()


CHILD = textwrap.dedent(
    """
    import sys
    from quicmesh.config import StoreConfig
    from quicmesh.identity import KeyPair
    from quicmesh.store import append
    from quicmesh.store.sqlite import SqliteStore

    s = SqliteStore(sys.argv[1], StoreConfig())
    kp = KeyPair.from_seed(b"k" * 32)
    i = 0
    while True:
        st = append(s, kp, "journal", b"entry %d" % i, i)
        sys.stdout.write("%d\\n" % st.op.seq)
        sys.stdout.flush()
        i += 1
    """
)


def test_sqlite_survives_kill_9(tmp_path: Path, registry: ContainerRegistry) -> None:
    path = tmp_path / "crash.sqlite"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    acked = -1
    try:
        while acked < 150:
            line = proc.stdout.readline()
            assert line, "child exited early"
            acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    s = SqliteStore(path, StoreConfig(), registry=registry)
    kp = KeyPair.from_seed(b"k" * 32)
    head = s.head(kp.node_id, "journal")
    assert head is not None and head.seq >= acked
    # the whole chain verifies from seq 0 into a fresh store
    check = MemoryStore(StoreConfig(), registry=registry)
    seq = 0
    while True:
        batch = s.iter_range(kp.node_id, "journal", seq, 64)
        if not batch:
            break
        for st in batch:
            assert check.ingest(st.op, st.payload) is IngestResult.STORED
        seq = batch[-1].op.seq + 1
    assert seq == head.seq + 1
    assert append(s, kp, "journal", b"after", 0).op.seq == head.seq + 1
    s.close()


def test_config_defaults_are_sane() -> None:
    cfg = StoreConfig()
    assert cfg.sync_batch_bytes + 2 * cfg.max_operation_size <= 1 << 20 or cfg.sync_batch_bytes < 1 << 20
    assert dataclasses.replace(cfg, max_logs=1).max_logs == 1


def test_sqlite_file_of_an_earlier_release_is_refused_clearly(tmp_path: Path, registry: ContainerRegistry) -> None:
    import sqlite3

    from quicmesh.errors import UnknownVersion

    path = tmp_path / "old.sqlite"
    s = SqliteStore(path, StoreConfig(), registry=registry)
    append(s, ME, "l", b"x", 0)
    s.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=0")  # what the release before the realm in headers wrote
    db.commit()
    db.close()
    with pytest.raises(UnknownVersion, match="move the file away"):
        SqliteStore(path, StoreConfig(), registry=registry)
    # an empty file of an earlier release is upgraded in place
    empty = tmp_path / "empty.sqlite"
    db = sqlite3.connect(empty)
    db.executescript(
        "CREATE TABLE logs(author BLOB, name TEXT, lo INTEGER, hi INTEGER, head_id BLOB, local INTEGER,"
        " pruned INTEGER, prunable INTEGER, nops INTEGER, nbytes INTEGER, PRIMARY KEY(author, name));"
        "CREATE TABLE ops(author BLOB, name TEXT, seq INTEGER, id BLOB, ts INTEGER, size INTEGER, op BLOB,"
        " payload BLOB, PRIMARY KEY(author, name, seq));"
    )
    db.close()
    s = SqliteStore(empty, StoreConfig(), registry=registry)
    assert append(s, ME, "l", b"x", 0).op.seq == 0
    s.close()
