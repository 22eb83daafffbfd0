"""Churn of identities, some vanishing without a close: per-publisher state must end.

The leak this guards against (issue #12, the lab soak): every gossip batch's signature check was
memoised process-wide in an LRU of 4,096 ``(key, signature, signed bytes)`` entries, and every
publisher's parsed Ed25519 key in a second LRU of 4,096 (native memory). A node checks each new
batch once, so in production the memo never hit; under churn of fresh identities both kept
filling with the keys and signatures of publishers long gone: ~3 KB of RSS per churn cycle for an
hour on every hub (``make lab-soak``), within the "bounds" but never back. The memo is now
:data:`quicmesh.core.guard.VERIFIED`, a TTL map: a check is remembered ``gossip.seen_ttl``
seconds (still shared by the nodes of a simulation), then forgotten.
"""

from __future__ import annotations

import asyncio
import os

from quicmesh.bounded import REGISTRY
from quicmesh.config import GossipConfig, NodeConfig
from quicmesh.core import guard as guard_mod
from quicmesh.core.guard import VERIFIED, VERIFIED_CAPACITY, Guard
from quicmesh.core.trust import Trust
from quicmesh.identity import KeyPair
from quicmesh.runtime.memory import MemoryNetwork, MemoryTransport
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually


def _churned(pubs: set[bytes]) -> int:
    return sum(1 for k in VERIFIED.keys() if k[0] in pubs)


def test_signature_memo_forgets_churned_publishers_after_seen_ttl() -> None:
    cfg = NodeConfig(realm="t", gossip=GossipConfig(seen_ttl=2.0))
    me = KeyPair.generate()
    g = Guard(me, Trust.open_realm("t"), wall=lambda now: now, config=cfg)
    prefix = g._prefix
    pubs: set[bytes] = set()
    t0 = 1_000_000.0  # a clock of its own: far from any other test's entries
    for i in range(300):  # 300 fresh identities, each publishing one batch, 1 s apart
        kp = KeyPair.generate()
        pub = kp.node_id.raw
        digest = os.urandom(32)
        sig = kp.sign(prefix + digest)
        pubs.add(pub)
        assert guard_mod._signature_valid(pub, sig, prefix + digest, t0 + i, 2.0)
        assert not guard_mod._signature_valid(pub, b"\0" * 64, prefix + digest, t0 + i, 2.0)
        g.expire(t0 + i)
        # a check is remembered while the batch's id is (seen_ttl), so at most the last ~2 s of
        # publishers: the memo follows the rate, not the number of identities ever seen
        assert _churned(pubs) <= 2 * 3, i
    assert _churned(pubs) > 0  # the memo is used (a simulation's nodes share one check)
    g.expire(t0 + 300 + 2.0)
    print(f"signature memo after 300 churned publishers and seen_ttl: {_churned(pubs)} of their entries")
    assert _churned(pubs) == 0
    assert len(VERIFIED) <= VERIFIED_CAPACITY
    assert VERIFIED in REGISTRY  # a bounded container: size, capacity, evictions, expirations
    assert not hasattr(guard_mod, "_public_key")  # no per-publisher key cache left beside it


async def test_hub_forgets_churned_identities_that_vanished_without_a_close() -> None:
    """A hub, 40 churn cycles of fresh identities (subscribe, publish, leave), every other one
    vanishing without a close (its transport crashes): once ``seen_ttl`` has passed, the hub's
    signature memo holds nothing of theirs. An observer subscribed beside the hub makes the hub
    forward every churner's batches, so it checks each at once (#14: a batch straight from its
    publisher that a node forwards to nobody has its signature checked only when first served)."""
    net = MemoryNetwork()
    cfg = NodeConfig(realm="t", gossip=GossipConfig(seen_ttl=1.0))
    hub = await Node.start(cfg, network=net)
    sub = await hub.subscribe("churn.>")
    observer = await Node.start(cfg.replace(bootstrap=(hub.address,)), network=net)
    osub = await observer.subscribe("churn.>")
    await eventually(lambda: hub.health()["gossip"]["swarms"].get("churn", {}).get("eager", 0) >= 1, timeout=10,
                     what="the observer is the hub's neighbour in the churn swarm")
    pubs: set[bytes] = set()
    crashed = 0
    peak = 0
    try:
        for n in range(40):
            node = await Node.start(cfg.replace(bootstrap=(hub.address,)), network=net, keypair=KeyPair.generate())
            pubs.add(node.id.raw)
            try:
                await node.wait_for_subscriber(f"churn.{n}", 5)
                for i in range(3):
                    await node.publish(f"churn.{n}", b"m%d" % i)
                for _ in range(3):
                    msg = await asyncio.wait_for(sub.get(), 5)
                    assert msg.sender == node.id
                peak = max(peak, _churned(pubs))
                if n % 2:
                    assert isinstance(node.transport, MemoryTransport)
                    await node.transport.crash()  # vanishes: no close reaches the hub
                    crashed += 1
            finally:
                await node.stop()
        assert peak > 0  # the hub checked (and remembered) the churners' batches
        await eventually(lambda: _churned(pubs) == 0, timeout=10)
        print(f"hub after 40 churned identities ({crashed} vanished without a close): "
              f"{_churned(pubs)} signature checks of theirs remembered (peak {peak}), memo size {len(VERIFIED)}")
    finally:
        await osub.close()
        await observer.stop()
        await sub.close()
        await hub.stop()
