"""Who may write a log (#11): every receiver of log sync checks that each operation's author holds
``log`` permission on the log, with the author's certificate that travels with the operations.

Real nodes over QUIC on loopback, in an authority realm (realm file and member certificates, as
the command line starts them). The hostile member writes a log its certificate does not allow by
bypassing its own check (its log handle's permission hook removed, its serve filter replaced by
one that checks nothing); the honest nodes are unmodified. Every test prints and asserts a figure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from quicmesh.config import NodeConfig, StoreConfig, TransportConfig
from quicmesh.core.permissions import Permissions
from quicmesh.core.trust import Authority
from quicmesh.identity import KeyPair, NodeId
from quicmesh.runtime.credentials import save_certificate, save_realm
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

FULL = ("publish:>", "subscribe:>", "advertise:>", "call:>", "log:>")
NO_LEDGER = ("publish:>", "subscribe:>", "advertise:>", "call:>", "log:other")
LOG = "ledger"
FAST = TransportConfig(handshake_timeout=10.0, idle_timeout=15.0, keepalive_interval=0.5)
STORE = StoreConfig(sync_retry_min=0.2, sync_retry_max=2.0)

pytestmark = pytest.mark.timeout(120)


class Realm:
    """An authority realm whose member nodes are started from files, as the command line does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.auth = Authority.create("logperm")
        self.realm_file = tmp / "realm.pub"
        save_realm(self.realm_file, self.auth.realm)
        self.serial = 0
        self.keys: dict[str, KeyPair] = {}
        self.nodes: list[Node] = []

    def config(self, name: str, rules: tuple[str, ...], boot: tuple[str, ...], data: bool) -> NodeConfig:
        kp = self.keys.setdefault(name, KeyPair.generate())
        cert_file = self.tmp / f"{name}.cert"
        if not cert_file.exists():
            self.serial += 1
            cert = self.auth.admit(kp.node_id, Permissions.parse(rules), not_before=0, not_after=2**40,
                                   serial=self.serial)
            save_certificate(cert_file, self.auth.realm, cert)
        return NodeConfig(realm="logperm", transport=FAST, store=STORE, bootstrap=boot,
                          realm_file=str(self.realm_file), cert=str(cert_file),
                          data_dir=str(self.tmp / name) if data else None)

    async def start(self, name: str, rules: tuple[str, ...] = FULL, *, boot: Node | None = None,
                    data: bool = False) -> Node:
        cfg = self.config(name, rules, (boot.address,) if boot else (), data)
        node = await Node.start(cfg, keypair=self.keys[name])
        self.nodes.append(node)
        if boot is not None:
            await eventually(lambda: boot.id in node.peers() and node.id in boot.peers(), timeout=20)
        return node

    async def stop(self, node: Node) -> None:
        self.nodes.remove(node)
        await node.stop()


@asynccontextmanager
async def realm(tmp: Path) -> AsyncIterator[Realm]:
    r = Realm(tmp)
    try:
        yield r
    finally:
        for n in reversed(r.nodes):
            await n.stop()


def held(node: Node, author: NodeId, log: str = LOG) -> int:
    """Operations of ``author``'s ``log`` stored at ``node``."""
    store = node.logs.store
    assert store is not None
    head, low = store.head(author, log), store.low(author, log)
    return 0 if head is None or low is None else head.seq - low + 1


def refused(node: Node) -> dict[str, int]:
    sync = node.logs.sync
    assert sync is not None
    return dict(sync.trust.refused)


def sharing(nodes: list[Node], log: str = LOG) -> Callable[[], bool]:
    return lambda: all(p.id in n.logs._sharing(log) for n in nodes for p in nodes if p is not n and p.id in n.peers())


@dataclass(frozen=True)
class _NoCheck:
    """The hostile member's serve filter: sends its own certificate, checks nothing."""

    own: bytes
    own_cert: bytes | None

    def cert(self, author: bytes, stored: bytes | None, log: str) -> bytes | None:
        return self.own_cert if author == self.own else stored


@pytest.mark.parametrize("path", ["pull", "live"])
async def test_a_member_without_log_permission_writes_and_no_peer_accepts_it(tmp_path: Path, path: str) -> None:
    async with realm(tmp_path) as r:
        b = await r.start("b")
        c = await r.start("c", boot=b)
        x = await r.start("x", NO_LEDGER, boot=b)
        await eventually(lambda: x.id in c.peers() and c.id in x.peers(), timeout=20)  # x is everyone's neighbour
        xlog = x.log(LOG)
        xlog.permit = None  # the hostile member skips its own check
        sync = x.logs.sync
        assert sync is not None
        sync.trust.serve_filter = lambda wall: _NoCheck(x.id.raw, x.core.trust.own_certificate)  # type: ignore
        n = 30
        early = n * 2 // 3 if path == "pull" else 0
        for i in range(early):  # written before the honest nodes replicate the log: offered by pull sync
            await xlog.append(b"forged-%d" % i)
        blog, clog = b.log(LOG), c.log(LOG)
        if path == "live":
            await eventually(sharing([b, c, x]), timeout=20)
        for i in range(early, n):  # pushed live (those after the block reach no one)
            await xlog.append(b"live-%d" % i)
        await eventually(lambda: all(p.core.blocked(x.id, p._now()) for p in (b, c)), timeout=30)
        await blog.append(b"honest")  # the honest nodes still replicate with each other
        await eventually(lambda: held(c, b.id) == 1, timeout=20)
        accepted = [held(p, x.id) for p in (b, c)]
        denied = [refused(p)["denied"] for p in (b, c)]
        blocked = sum(1 for p in (b, c) if p.core.blocked(x.id, p._now()))
        events = [p.gauges().get("log_ops_refused_denied_total", 0.0) for p in (b, c)]
        print(f"\nlog without permission over QUIC ({path}): {sum(accepted)} of {n} operations accepted by 2 peers"
              f" ({early} offered by pull sync, {n - early} pushed live); refusals counted (denied, per offer)"
              f" {denied}; writer blocked by {blocked} of 2; /metrics log_ops_refused_denied_total {events}")
        assert accepted == [0, 0] and blocked == 2
        assert all(d >= 1 for d in denied) and events == [float(d) for d in denied]
        assert held(x, x.id) == n  # only its own store holds them
        assert b.id in c.peers() and c.id in b.peers()  # honest links kept
        for h in (xlog, blog, clog):
            await h.close()


async def test_an_authors_operations_reach_a_third_node_only_through_a_restarted_relay(tmp_path: Path) -> None:
    async with realm(tmp_path) as r:
        relay = await r.start("relay", data=True)
        a = await r.start("a", boot=relay)
        alog, rlog = a.log(LOG), relay.log(LOG)
        await eventually(sharing([a, relay]), timeout=20)
        n = 10
        for i in range(n):
            await alog.append(b"a-%d" % i)
        await eventually(lambda: held(relay, a.id) == n, timeout=20)
        author = a.id
        await alog.close()
        await r.stop(a)  # the author is gone for good
        await rlog.close()
        await r.stop(relay)
        relay = await r.start("relay", data=True)  # restarted on its SQLite store
        store = relay.logs.store
        assert store is not None and store.certificate(author) is not None  # persisted with the operations
        rlog = relay.log(LOG)
        c = await r.start("c", boot=relay)
        clog = c.log(LOG)
        await eventually(lambda: held(c, author) == n, timeout=30)
        why = refused(c)
        offences = c.core.guard.counters["offences"]
        print(f"\nrelay: {held(c, author)} of {n} operations of an author reached a third node only through a"
              f" relay restarted on its store (the author's certificate from there); refused {sum(why.values())},"
              f" offences {offences}")
        assert sum(why.values()) == 0 and offences == 0 and author not in c.peers()
        for h in (rlog, clog):
            await h.close()


async def test_a_revoked_authors_new_operations_are_refused_without_penalising_the_relay(tmp_path: Path) -> None:
    async with realm(tmp_path) as r:
        relay = await r.start("relay")
        a = await r.start("a", boot=relay)
        b = await r.start("b", boot=relay)
        logs = [n.log(LOG) for n in (a, relay, b)]
        await eventually(sharing([a, relay, b]), timeout=20)
        for i in range(3):
            await logs[0].append(b"before-%d" % i)
        await eventually(lambda: held(b, a.id) == 3 and held(relay, a.id) == 3, timeout=20)
        rl = r.auth.revoke(None, now=1, subjects=(a.id,))
        assert b.realm_service.receive(rl.encode())  # b adopts the list; the relay has not heard of it
        await eventually(lambda: a.id not in b.peers(), timeout=10)
        n = 5
        for i in range(n):
            await logs[0].append(b"after-%d" % i)
        await eventually(lambda: held(relay, a.id) == 3 + n, timeout=20)
        await eventually(lambda: refused(b)["revoked"] >= n, timeout=20)
        accepted = held(b, a.id) - 3
        offences = b.core.guard.counters["offences"]
        print(f"\nrevoked author: {accepted} of {n} new operations accepted by a node that knows of the revocation"
              f" (received through an unaware relay); refused (revoked) {refused(b)['revoked']}; offences of the"
              f" relay {offences}; relay still connected: {relay.id in b.peers()}")
        assert accepted == 0 and offences == 0 and relay.id in b.peers()
        assert not b.core.blocked(relay.id, b._now())
        for h in logs:
            await h.close()
