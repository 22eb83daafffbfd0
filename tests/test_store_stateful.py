"""Hypothesis stateful models of both stores: acknowledged local appends are never lost, caps
hold, counts are exact, every log is one contiguous verified chain, empty logs disappear."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import StoreConfig
from quicmesh.core.oplog import Operation, create_operation, validate
from quicmesh.errors import LimitExceeded
from quicmesh.identity import KeyPair
from quicmesh.store import IngestResult, MemoryStore, append
from quicmesh.store.sqlite import SqliteStore

ME = KeyPair.from_seed(b"m" * 32)
AUTHORS = [KeyPair.from_seed(bytes([i]) * 32) for i in (1, 2)]
LOGS = ["cache", "docs"]
CFG = StoreConfig(max_operations=14, max_bytes=7000, max_logs=5, max_operation_size=400)


def _chain(kp: KeyPair, log: str, n: int) -> list[tuple[Operation, bytes]]:
    out: list[tuple[Operation, bytes]] = []
    prev = None
    for i in range(n):
        payload = bytes([i]) * (10 + 37 * i % 90)
        op = create_operation(kp, log, payload, prev, 1000 * i + len(log), prune=(i % 11 == 10))
        out.append((op, payload))
        prev = op
    return out


FOREIGN = {(a.node_id, log): _chain(a, log, 24) for a in AUTHORS for log in LOGS}
KEYS = sorted(FOREIGN, key=lambda k: (k[0].raw, k[1]))


class StoreModel(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.registry = ContainerRegistry("stateful")
        self.tmp = tempfile.mkdtemp(prefix="qm-store-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
        if self.kind == "memory":
            self.store: MemoryStore | SqliteStore = MemoryStore(CFG, registry=self.registry)
        else:
            self.store = SqliteStore(Path(self.tmp) / "s.db", CFG, registry=self.registry)
        self.store.set_retention("cache", 100)  # foreign "cache" logs are prunable
        # acknowledged local appends that the author did not prune or drop: log -> {seq: payload}
        self.acked: dict[str, dict[int, bytes]] = {}
        self.clock = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(log=st.sampled_from(["mine", "journal", "cache"]), size=st.integers(0, 390) | st.integers(0, 20))
    def append_local(self, log: str, size: int) -> None:
        self.clock += 1
        payload = bytes([size % 256]) * size
        try:
            stored = append(self.store, ME, log, payload, self.clock)
        except LimitExceeded:
            return
        self.acked.setdefault(log, {})[stored.op.seq] = payload

    @rule(author=st.integers(0, len(AUTHORS) - 1), n=st.integers(1, 6))
    def ingest_cache_run(self, author: int, n: int) -> None:
        for _ in range(n):
            self.ingest_next(KEYS.index((AUTHORS[author].node_id, "cache")), 0)

    @rule(which=st.integers(0, len(KEYS) - 1), skip=st.integers(0, 3))
    def ingest_next(self, which: int, skip: int) -> None:
        author, log = KEYS[which]
        chain = FOREIGN[(author, log)]
        head = self.store.head(author, log)
        nxt = 0 if head is None else head.seq + 1
        idx = nxt + skip
        if idx >= len(chain):
            return
        op, payload = chain[idx]
        res = self.store.ingest(op, payload, allow_gap=skip > 0)
        assert res in (IngestResult.STORED, IngestResult.REFUSED)
        if res is IngestResult.STORED:
            head = self.store.head(author, log)
            assert head is not None and head.seq == idx
        # a replay is a duplicate
        if res is IngestResult.STORED:
            assert self.store.ingest(op, payload) is IngestResult.DUPLICATE

    @rule(log=st.sampled_from(["mine", "journal", "cache"]), back=st.integers(0, 5))
    def prune_local(self, log: str, back: int) -> None:
        head = self.store.head(ME.node_id, log)
        if head is None:
            return
        before = head.seq - back
        self.store.prune(ME.node_id, log, before)
        for seq in [s for s in self.acked.get(log, {}) if s < min(before, head.seq)]:
            del self.acked[log][seq]

    @rule(which=st.integers(0, len(KEYS) - 1))
    def drop_foreign(self, which: int) -> None:
        author, log = KEYS[which]
        self.store.drop_log(author, log)
        assert self.store.head(author, log) is None

    @rule(log=st.sampled_from(["mine", "journal"]))
    def drop_local(self, log: str) -> None:
        self.store.drop_log(ME.node_id, log)
        self.acked.pop(log, None)

    @invariant()
    def acknowledged_local_appends_are_kept(self) -> None:
        for log, seqs in self.acked.items():
            for seq, payload in seqs.items():
                got = self.store.get(ME.node_id, log, seq)
                assert got is not None, (log, seq)
                assert got.payload == payload

    @invariant()
    def caps_hold_and_counts_are_exact(self) -> None:
        c = self.store.counts()
        assert c.operations <= CFG.max_operations
        assert c.bytes <= CFG.max_bytes
        assert c.logs <= CFG.max_logs
        heads = self.store.heads()
        assert len(heads) == c.logs
        n = b = 0
        for (author, log), hi in heads.items():
            lo = self.store.low(author, log)
            assert lo is not None
            ops = self.store.iter_range(author, log, 0, 1000)
            assert ops, "empty logs are removed"
            assert [s.op.seq for s in ops] == list(range(lo, hi + 1))
            prev = None
            for s in ops:
                validate(s.op, s.payload, prev, CFG.max_operation_size, allow_gap=prev is None)
                prev = s.op
            n += len(ops)
            b += sum(s.size for s in ops)
        assert (n, b) == (c.operations, c.bytes)


class SqliteModel(StoreModel):
    kind = "sqlite"


_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMemoryStoreModel = StoreModel.TestCase
TestMemoryStoreModel.settings = _SETTINGS
TestSqliteStoreModel = SqliteModel.TestCase
TestSqliteStoreModel.settings = _SETTINGS


def test_the_model_reaches_eviction_and_refusal() -> None:
    """A seeded walk through the same rules: the states the properties cover are reached."""
    import random

    for kind in ("memory", "sqlite"):
        model = SqliteModel() if kind == "sqlite" else StoreModel()
        rng = random.Random(3)
        try:
            for _ in range(400):
                r = rng.random()
                if r < 0.3:
                    model.ingest_next(rng.randrange(len(KEYS)), rng.choice([0, 0, 0, 1]))
                elif r < 0.6:
                    model.ingest_cache_run(rng.randrange(len(AUTHORS)), 3)
                elif r < 0.95:
                    model.append_local(rng.choice(["mine", "cache"]), rng.randrange(0, 60))
                else:
                    model.prune_local("mine", 3)
                model.caps_hold_and_counts_are_exact()
                model.acknowledged_local_appends_are_kept()
            assert isinstance(model.store, MemoryStore | SqliteStore)  # the Store protocol has no stats()
            stats = model.store.stats()
            assert stats.evictions > 5 and stats.rejections > 5, stats
        finally:
            model.teardown()
