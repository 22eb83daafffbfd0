"""The gossip caches' index by swarm (#14): what one swarm holds is found without walking the
others' entries, and the index never disagrees with the caches themselves.

Before the index, leaving a swarm and catching up a new neighbour each walked the whole seen-id
cache (100,000 ids by default): after a flood of another topic, a gateway spent ~77 % of its time
in that walk while light clients subscribed and unsubscribed (py-spy on `make bench-peers`'s
server), and a light-client cycle took 23-28 ms at p50 instead of ~10.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import GossipConfig
from quicmesh.core.gossip_caches import GossipCaches
from quicmesh.core.mesh_messages import MGossip

PUB = bytes(32)
SWARMS = ("a", "b", "c")


def batch(swarm: str, seq: int, size: int = 8) -> MGossip:
    return MGossip(swarm, f"{swarm}.t", PUB, 1, seq, [b"x" * size], 0, b"s" * 64, None)


def mid(i: int, swarm: str = "") -> bytes:
    """A batch id; as a real one (a hash over the topic among others), it names one swarm."""
    return swarm.encode().ljust(4, b"-") + i.to_bytes(12, "big")


def brute(c: GossipCaches, swarm: str) -> tuple[int, list[bytes]]:
    """What the caches hold for ``swarm``, by walking all of them (the old way)."""
    seen = sum(1 for s in c.seen.values() if s == swarm)
    payloads = [k for k, m in c.payloads.items() if m.s == swarm]
    return seen + len(payloads), payloads


ops = st.lists(
    st.tuples(st.sampled_from(["remember", "keep", "both", "expire", "purge", "big"]),
              st.integers(0, 40), st.sampled_from(SWARMS), st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.7, 2.5])),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_the_index_agrees_with_the_caches_through_evictions_expiry_and_purges(steps: list[Any]) -> None:
    # small capacities and short lives, so evictions (count and bytes) and expiry happen often
    cfg = GossipConfig(seen_capacity=5, seen_ttl=2.0, payload_cache_capacity=4, payload_cache_ttl=1.0,
                       payload_cache_bytes=300)
    c = GossipCaches(cfg, ContainerRegistry())
    now = 0.0
    for op, i, swarm, dt in steps:
        now += dt
        if op in ("remember", "both"):
            c.remember(mid(i, swarm), swarm, now)
        if op in ("keep", "both"):
            c.keep(mid(i, swarm), batch(swarm, i), now)
        if op == "big":  # larger than the whole byte budget: refused, nothing indexed
            c.keep(mid(1000 + i, swarm), batch(swarm, i, size=1000), now)
        if op == "expire":
            c.expire(now)
        if op == "purge":
            n_before, _ = brute(c, swarm)
            assert c.purge(swarm) == n_before
        for s in SWARMS:
            n, payload_ids = brute(c, s)
            assert c.count(s) == n, (s, op)
            assert [k for k, _ in c.recent(s, 100)] == payload_ids
            assert [k for k, _ in c.recent(s, 3)] == payload_ids[-3:]
        # #14: the index by (publisher, epoch, swarm, first seq) that pulls are answered from
        assert len(c._by_seq) == len(c.payloads)
        for k, m in c.payloads.items():
            assert c.by_seq(PUB, 1, m.s, m.seq) == (k, m)
        assert c.by_seq(PUB, 2, swarm, i) is None and c.by_seq(bytes(31) + b"\1", 1, swarm, i) is None


def test_evicted_and_expired_ids_leave_the_index() -> None:
    cfg = GossipConfig(seen_capacity=5, seen_ttl=2.0, payload_cache_capacity=3, payload_cache_ttl=1.0)
    c = GossipCaches(cfg, ContainerRegistry())
    for i in range(8):  # 16 ids into 5 places, 16 batches into 3
        for s in ("a", "b"):
            c.remember(mid(i, s), s, i * 0.1)
            c.keep(mid(i, s), batch(s, i), i * 0.1)
    assert len(c.seen) == 5 and len(c.payloads) == 3
    for s in ("a", "b"):
        assert c.count(s) == brute(c, s)[0]
        assert [k for k, _ in c.recent(s, 10)] == brute(c, s)[1]
    assert c.count("a") + c.count("b") == 8
    c.expire(10.0)
    assert c.count("a") == c.count("b") == 0 and c.recent("a", 10) == []


def test_leaving_a_swarm_does_not_walk_the_other_swarms() -> None:
    c = GossipCaches(GossipConfig(), ContainerRegistry())
    for i in range(50_000):  # a flood of another topic
        c.remember(mid(i), "flood", 0.0)
        if i % 5 == 0:
            c.keep(mid(i), batch("flood", i), 0.0)
    c.remember(mid(10**6), "light", 1.0)
    c.keep(mid(10**6), batch("light", 0), 1.0)

    def walked(*_: object) -> Any:
        raise AssertionError("a walk over the whole cache")

    for cache in (c.seen, c.payloads):
        for name in ("items", "values", "keys", "__iter__"):
            setattr(cache, name, walked)
    assert c.count("light") == 2
    assert [k for k, _ in c.recent("light", 10)] == [mid(10**6)]
    assert c.purge("light") == 2
    assert c.count("light") == 0 and c.recent("light", 10) == []
    assert c.count("flood") == 60_000
    assert mid(10**6) not in c.seen and mid(10**6) not in c.payloads
    print("purge of a swarm beside 60,000 entries of another: 2 removed, no walk")
