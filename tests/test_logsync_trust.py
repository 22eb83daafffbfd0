"""Log sync in an authority realm, at the core level: authors' certificates travel with their
operations (live pushes and sync batches, through the codec), receivers check each author's
``log`` permission, refuse and count what fails, and penalise the sending peer only for its own
faults; relays forward the certificates they verified; the stores keep them."""

from __future__ import annotations

from pathlib import Path
from random import Random

import pytest
from test_logsync import CFG, Net

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import StoreConfig
from quicmesh.core.guard import Guard
from quicmesh.core.log_effects import IngestOps, ReadBatch
from quicmesh.core.log_messages import LiveOp, SyncBatch
from quicmesh.core.log_trust import CertFilter, newer_certificate
from quicmesh.core.logsync import LogSync
from quicmesh.core.oplog import create_operation
from quicmesh.core.permissions import Permissions
from quicmesh.core.trust import Authority, Certificate, Trust
from quicmesh.core.wire import Message
from quicmesh.identity import KeyPair, NodeId
from quicmesh.store import MemoryStore, Store, append
from quicmesh.store.sqlite import SqliteStore

FULL = ("publish:>", "subscribe:>", "advertise:>", "call:>", "log:>")
LOG = "ledger"


class Realm:
    """An authority and a guarded net of ``n`` log syncs, node ``i`` admitted with ``rules[i]``."""

    def __init__(self, n: int, registry: ContainerRegistry, rules: dict[int, tuple[str, ...]] | None = None,
                 cfg: StoreConfig = CFG) -> None:
        self.auth = Authority.create("logs", KeyPair.from_seed(b"A" * 32))
        self.net = Net(n, registry, cfg)
        self.guards: dict[NodeId, Guard] = {}
        self.certs: dict[NodeId, Certificate] = {}
        for i, k in enumerate(self.net.keys):
            cert = self.auth.admit(k.node_id, Permissions.parse((rules or {}).get(i, FULL)), not_before=0,
                                   not_after=2**40, serial=i + 1)
            self.certs[k.node_id] = cert
            guard = Guard(k, Trust(self.auth.realm, certificate=cert, registry=registry), wall=lambda now: now,
                          registry=registry)
            self.guards[k.node_id] = guard
            self.net.syncs[k.node_id] = LogSync(k, cfg, Random(i), registry, realm=self.auth.realm.wire_id,
                                                guard=guard)

    def link(self, a: NodeId, b: NodeId, log: str = LOG) -> None:
        """Connect ``a`` and ``b`` (both replicate ``log`` with each other)."""
        for me, other in ((a, b), (b, a)):
            sync = self.net.syncs[me]
            peers = set(sync.interests().get(log, frozenset())) | {other}
            self.net.apply(me, sync.interest(log, peers, self.net.now))
            self.net.apply(me, sync.peer_connected(other, self.net.now))

    def append(self, who: NodeId, n: int, log: str = LOG) -> None:
        """``who`` appends ``n`` operations through its core (no permission check of its own)."""
        for i in range(n):
            _, outs = self.net.append(who, log, b"op-%d" % i, int(self.net.now * 1e6) + i)
            self.net.apply(who, outs)
        self.net.pump()

    def held(self, at: NodeId, author: NodeId, log: str = LOG) -> int:
        """Operations of ``author``'s ``log`` stored at ``at``."""
        store = self.net.store_of[at]
        head, low = store.head(author, log), store.low(author, log)
        return 0 if head is None or low is None else head.seq - low + 1

    def settle(self) -> None:
        self.net.run_until(lambda: not self.net.queue and not any(s.running() for s in self.net.syncs.values()))

    def tick(self, seconds: float) -> None:
        """Let ``seconds`` pass and run every due timer (anti-entropy pulls), then settle."""
        self.net.now += seconds
        for me, sync in self.net.syncs.items():
            self.net.apply(me, sync.handle_timer(self.net.now))
        self.settle()


def _certs_sent(net: Net) -> list[object]:
    return [m.cert if isinstance(m, LiveOp) else m.certs for _, _, m in net.sent if isinstance(m, LiveOp | SyncBatch)]


def test_an_author_without_log_permission_reaches_no_one_and_its_sender_is_blocked(
        registry: ContainerRegistry) -> None:
    r = Realm(3, registry, {0: ("log:other",)})
    x, b, c = r.net.ids
    r.link(x, b)
    r.link(x, c)
    r.link(b, c)
    r.settle()
    r.append(x, 10)  # its own check bypassed: the core appends what it is given
    r.settle()
    accepted = r.held(b, x) + r.held(c, x)
    refused = [r.net.syncs[p].trust.refused["denied"] for p in (b, c)]
    blocked = [r.guards[p].blocked(x, r.net.now) for p in (b, c)]
    print(f"\ncore: {accepted} of 20 operations of an author without log permission accepted; "
          f"refused (denied) {refused}; blocked by {sum(blocked)} of 2")
    assert accepted == 0 and all(n >= 3 for n in refused) and all(blocked)
    assert r.held(x, x) == 10  # what it did to itself
    # it never serves them by pull sync: its own serve filter leaves them out
    assert not any(isinstance(m, SyncBatch) and m.ops for s, _, m in r.net.sent if s == x)
    assert all(r.net.syncs[p].trust.offences >= 3 for p in (b, c))


def test_a_relay_forwards_the_authors_certificate_live_and_by_pull(registry: ContainerRegistry) -> None:
    r = Realm(4, registry)
    a, relay, c, late = r.net.ids
    r.link(a, relay)
    r.link(relay, c)  # c never talks to a
    r.settle()
    r.append(a, 5)
    r.settle()
    assert r.held(relay, a) == 5 and r.held(c, a) == 5  # live: a -> relay -> c, each with a's certificate
    assert r.net.store_of[relay].certificate(a) == r.certs[a].encode()
    r.link(relay, late)  # by pull: late gets a's operations and certificate from relay's store
    r.settle()
    assert r.held(late, a) == 5
    refused = sum(sum(s.trust.refused.values()) for s in r.net.syncs.values())
    offences = sum(g.counters["offences"] for g in r.guards.values())
    forwarded = [m for s, d, m in r.net.sent if s == relay and d in (c, late) and isinstance(m, LiveOp | SyncBatch)]
    print(f"\ncore relay: 5 of 5 operations reached c (live) and a late node (pull) only via the relay; "
          f"refused {refused}, offences {offences}")
    assert forwarded and refused == 0 and offences == 0
    assert all(m.cert == r.certs[a].encode() for m in forwarded if isinstance(m, LiveOp))
    assert any(r.certs[a].encode() in m.certs for m in forwarded if isinstance(m, SyncBatch))


@pytest.mark.parametrize("tamper", ["none", "another_node", "another_realm", "garbage"])
def test_operations_without_their_authors_certificate_are_the_senders_fault(
        registry: ContainerRegistry, tamper: str) -> None:
    r = Realm(2, registry)
    a, b = r.net.ids
    other = Authority.create("logs", KeyPair.from_seed(b"B" * 32))  # same name, another authority
    foreign = other.admit(a, Permissions.parse(FULL), not_before=0, not_after=2**40, serial=1).encode()
    certs = {"none": None, "another_node": r.certs[b].encode(), "another_realm": foreign, "garbage": b"\x93xx"}

    def rewrite(src: NodeId, dst: NodeId, m: Message) -> Message:
        cert = certs[tamper]
        if isinstance(m, LiveOp) and src == a:
            return LiveOp(op=m.op, payload=m.payload, cert=cert)
        if isinstance(m, SyncBatch) and src == a and m.ops:
            return SyncBatch(sid=m.sid, log=m.log, ops=m.ops, more=m.more, certs=[cert] if cert else [])
        return m

    r.net.rewrite = rewrite
    r.link(a, b)
    r.settle()
    r.append(a, 3)
    r.settle()
    reason = "bad_certificate" if tamper == "another_realm" else "no_certificate"
    trust = r.net.syncs[b].trust
    print(f"\ncertificate {tamper}: {r.held(b, a)} of 3 stored, refused {trust.refused}")
    assert r.held(b, a) == 0 and trust.refused[reason] == 3
    assert r.guards[b].counters["offences"] == 3 and r.guards[b].blocked(a, r.net.now)


def test_revoked_and_expired_authors_are_refused_without_penalising_the_relay(registry: ContainerRegistry) -> None:
    r = Realm(3, registry)
    a, relay, b = r.net.ids
    r.link(a, relay)
    r.link(relay, b)
    r.settle()
    r.append(a, 2)
    r.settle()
    assert r.held(b, a) == 2
    rl = r.auth.revoke(None, now=1, subjects=(a,))
    r.guards[b].trust.apply_revocations(rl)  # b knows; the relay does not yet
    r.append(a, 4)
    r.settle()
    r.tick(CFG.resync_interval + 1)  # an anti-entropy pull from the relay too
    pulls = sum(1 for s, d, m in r.net.sent if s == relay and d == b and isinstance(m, SyncBatch) and m.ops)
    assert pulls >= 1
    trust = r.net.syncs[b].trust
    print(f"\nrevoked author: {r.held(b, a) - 2} of 4 new operations accepted via an unaware relay (live and"
          f" pull); refused (revoked) {trust.refused['revoked']}; relay offences {r.guards[b].counters['offences']}")
    assert r.held(relay, a) == 6 and r.held(b, a) == 2
    assert trust.refused["revoked"] >= 8 and r.guards[b].counters["offences"] == 0
    assert not r.guards[b].blocked(relay, r.net.now)


def test_an_expired_certificate_is_refused_without_penalty(registry: ContainerRegistry) -> None:
    r = Realm(2, registry)
    a, b = r.net.ids
    short = r.auth.admit(a, Permissions.parse(FULL), not_before=0, not_after=5, serial=99)
    r.guards[a].trust.renew(short, 0.0)
    r.link(a, b)
    r.net.now = 10.0  # past not_after, by both clocks
    r.settle()
    r.append(a, 2)  # pushed live with its expired certificate
    r.tick(CFG.resync_interval + 1)  # by pull: its serve filter leaves them out
    trust = r.net.syncs[b].trust
    assert r.held(b, a) == 0 and trust.refused["expired"] == 2
    assert r.guards[b].counters["offences"] == 0 and not r.guards[b].blocked(a, r.net.now)


def test_an_open_realm_sends_no_certificates(registry: ContainerRegistry) -> None:
    net = Net(2, registry)
    a, b = net.ids
    append(net.stores[1], net.keys[1], LOG, b"y", 1)  # fetched by pull
    net.connect_all(LOG)
    for i in range(3):  # pushed live
        net.apply(a, net.append(a, LOG, b"x", i)[1])
    net.run_until(lambda: net.stores[0].head(b, LOG) is not None and net.stores[1].head(a, LOG) is not None)
    sent = _certs_sent(net)
    assert any(isinstance(m, SyncBatch) and m.ops for _, _, m in net.sent)
    assert any(isinstance(m, LiveOp) for _, _, m in net.sent)
    assert sent and all(x is None or x == [] for x in sent)
    assert not net.syncs[a].trust.active and sum(net.syncs[b].trust.refused.values()) == 0


# -- the store side: certificates kept, served, persisted -------------------------------------------


def _cert(auth: Authority, kp: KeyPair, rules: tuple[str, ...] = FULL, *, serial: int = 1,
          not_after: int = 2**40) -> bytes:
    return auth.admit(kp.node_id, Permissions.parse(rules), not_before=0, not_after=not_after,
                      serial=serial).encode()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_keep_one_certificate_per_stored_author_across_restarts(
        kind: str, tmp_path: Path, registry: ContainerRegistry) -> None:
    auth = Authority.create("logs", KeyPair.from_seed(b"A" * 32))
    kp, other = KeyPair.from_seed(b"k" * 32), KeyPair.from_seed(b"o" * 32)

    def open_store() -> Store:
        if kind == "memory":
            return MemoryStore(StoreConfig(), registry=registry)
        return SqliteStore(tmp_path / "s.db", StoreConfig(), registry=registry)

    store = open_store()
    store.put_certificate(kp.node_id, _cert(auth, kp))
    assert store.certificate(kp.node_id) is None  # no log of that author: not kept
    op = create_operation(kp, LOG, b"p", None, 1, realm=auth.realm.wire_id)
    res = IngestOps(((op, b"p"),), allow_gap=False, certs={kp.node_id.raw: _cert(auth, kp)}).run(store)
    assert store.certificate(kp.node_id) == _cert(auth, kp), res
    older = _cert(auth, kp, serial=1, not_after=2**30)
    op2 = create_operation(kp, LOG, b"q", op, 2, realm=auth.realm.wire_id)
    IngestOps(((op2, b"q"),), allow_gap=False, certs={kp.node_id.raw: older}).run(store)
    assert store.certificate(kp.node_id) == _cert(auth, kp)  # the longer-lived one stays
    append(store, other, "x", b"z", 1, realm=auth.realm.wire_id)
    store.put_certificate(other.node_id, _cert(auth, other))
    if kind == "sqlite":
        store.close()
        store = open_store()
        assert store.certificate(kp.node_id) == _cert(auth, kp)  # persisted
    store.drop_log(kp.node_id, LOG)
    assert store.certificate(kp.node_id) is None and store.certificate(other.node_id) == _cert(auth, other)
    store.close()


def test_a_served_batch_carries_one_certificate_per_author_and_leaves_out_refused_ones(
        registry: ContainerRegistry) -> None:
    auth = Authority.create("logs", KeyPair.from_seed(b"A" * 32))
    realm = auth.realm.wire_id
    me, good, denied, revoked, bare = (KeyPair.from_seed(bytes([i]) * 32) for i in range(10, 15))
    store = MemoryStore(StoreConfig(), registry=registry)
    for kp in (me, good, denied, revoked, bare):
        prev = None
        for i in range(3):
            prev = create_operation(kp, LOG, b"v%d" % i, prev, i, realm=realm)
            store.ingest(prev, b"v%d" % i)
    store.put_certificate(good.node_id, _cert(auth, good))
    store.put_certificate(denied.node_id, _cert(auth, denied, ("log:other",)))
    store.put_certificate(revoked.node_id, _cert(auth, revoked, serial=7))
    rl = auth.revoke(None, now=1, serials=(7,))
    flt = CertFilter(me.node_id.raw, _cert(auth, me), 100.0, rl)
    batch = ReadBatch(LOG, {}, 64, 1 << 20, flt).run(store)
    authors = {create_author(o) for o, _ in batch.ops}
    assert authors == {me.node_id.raw, good.node_id.raw} and len(batch.ops) == 6
    assert sorted(batch.certs) == sorted([_cert(auth, me), _cert(auth, good)])
    assert ReadBatch(LOG, {good.node_id.raw: 2, me.node_id.raw: 2}, 64, 1 << 20, flt).run(store).certs == []
    plain = ReadBatch(LOG, {}, 64, 1 << 20).run(store)
    assert len(plain.ops) == 15 and plain.certs == []
    expired = CertFilter(me.node_id.raw, _cert(auth, me, not_after=50), 100.0, None)
    assert me.node_id.raw not in {create_author(o) for o, _ in ReadBatch(LOG, {}, 64, 1 << 20, expired).run(store).ops}


def create_author(data: bytes) -> bytes:
    from quicmesh.core.oplog import decode_operation

    return decode_operation(data).header.author


def test_newer_certificate_prefers_the_longer_lived_then_the_higher_serial() -> None:
    auth = Authority.create("logs", KeyPair.from_seed(b"A" * 32))
    kp = KeyPair.from_seed(b"k" * 32)
    a, b, c = _cert(auth, kp, not_after=100), _cert(auth, kp, not_after=200), _cert(auth, kp, serial=5, not_after=200)
    assert newer_certificate(None, a) and newer_certificate(a, b) and not newer_certificate(b, a)
    assert newer_certificate(b, c) and not newer_certificate(c, b) and not newer_certificate(a, a)
    assert newer_certificate(b"junk", a)

