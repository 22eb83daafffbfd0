"""Unit tests of the bounded containers, their overflow policies, statistics and registry."""

from __future__ import annotations

import asyncio
import copy as copy_module
import gc
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from quicmesh.bounded import (
    REGISTRY,
    BoundedDeque,
    BoundedDict,
    BoundedQueue,
    BoundedSet,
    ContainerRegistry,
    ContainerStats,
    LruMap,
    Overflow,
    QueueClosed,
    StatsSource,
    Tracked,
    TtlMap,
    TtlSet,
)
from quicmesh.errors import ContainerFull, LimitExceeded
from quicmesh.testing.wait import eventually

# A factory builds a container of capacity 3 and returns (container, insert(key, now) -> bool).
Insert = Callable[[Any, float], bool]
Factory = Callable[[ContainerRegistry, Overflow], tuple[Any, Insert]]


def _lru(reg: ContainerRegistry, ov: Overflow) -> tuple[Any, Insert]:
    m: LruMap[Any, Any] = LruMap("t.lru", 3, ov, registry=reg)
    return m, lambda k, now: m.set(k, k)


def _ttl(reg: ContainerRegistry, ov: Overflow) -> tuple[Any, Insert]:
    m: TtlMap[Any, Any] = TtlMap("t.ttl", 3, 10.0, ov, registry=reg)
    return m, lambda k, now: m.set(k, k, now)


def _set(reg: ContainerRegistry, ov: Overflow) -> tuple[Any, Insert]:
    s: TtlSet[Any] = TtlSet("t.set", 3, 10.0, ov, registry=reg)
    return s, lambda k, now: s.add(k, now)


def _deque(reg: ContainerRegistry, ov: Overflow) -> tuple[Any, Insert]:
    d: BoundedDeque[Any] = BoundedDeque("t.deque", 3, ov, registry=reg)
    return d, lambda k, now: d.append(k)


def _queue(reg: ContainerRegistry, ov: Overflow) -> tuple[Any, Insert]:
    q: BoundedQueue[Any] = BoundedQueue("t.queue", 3, ov, registry=reg)
    return q, lambda k, now: q.put_nowait(k)


FACTORIES = {"lru": _lru, "ttl": _ttl, "set": _set, "deque": _deque, "queue": _queue}


def _contents(c: Any) -> list[Any]:
    if isinstance(c, BoundedQueue):
        return list(c._items)
    return list(c)


# -- the three overflow policies, for every container ------------------------------------------


@pytest.mark.parametrize("kind", FACTORIES)
def test_evict_oldest(kind: str, registry: ContainerRegistry) -> None:
    c, insert = FACTORIES[kind](registry, Overflow.EVICT_OLDEST)
    for i in range(5):
        assert insert(i, float(i)) is True
    assert len(c) == 3
    assert sorted(_contents(c)) == [2, 3, 4]
    s = c.stats()
    assert (s.size, s.capacity, s.peak, s.evictions, s.rejections, s.expirations) == (3, 3, 3, 2, 0, 0)


@pytest.mark.parametrize("kind", FACTORIES)
def test_drop_newest(kind: str, registry: ContainerRegistry) -> None:
    c, insert = FACTORIES[kind](registry, Overflow.DROP_NEWEST)
    assert [insert(i, float(i)) for i in range(5)] == [True, True, True, False, False]
    assert sorted(_contents(c)) == [0, 1, 2]
    s = c.stats()
    assert (s.size, s.peak, s.evictions, s.rejections) == (3, 3, 0, 2)


@pytest.mark.parametrize("kind", FACTORIES)
def test_reject_raises_container_full(kind: str, registry: ContainerRegistry) -> None:
    c, insert = FACTORIES[kind](registry, Overflow.REJECT)
    for i in range(3):
        insert(i, 0.0)
    with pytest.raises(ContainerFull) as info:
        insert(99, 0.0)
    assert isinstance(info.value, LimitExceeded)
    assert info.value.limit == c.name and info.value.capacity == 3
    assert sorted(_contents(c)) == [0, 1, 2]
    assert c.stats().rejections == 1 and c.stats().evictions == 0


@pytest.mark.parametrize("kind", ["lru", "ttl", "set"])
@pytest.mark.parametrize("overflow", list(Overflow))
def test_replacing_a_key_in_a_full_map_never_overflows(
    kind: str, overflow: Overflow, registry: ContainerRegistry
) -> None:
    c, insert = FACTORIES[kind](registry, overflow)
    for i in range(3):
        insert(i, 0.0)
    insert(1, 1.0)  # present: no room needed, whatever the policy
    assert sorted(_contents(c)) == [0, 1, 2]
    assert c.stats().rejections == 0 and c.stats().evictions == 0


@pytest.mark.parametrize("kind", FACTORIES)
def test_bad_construction(kind: str, registry: ContainerRegistry) -> None:
    cls = {"lru": LruMap, "ttl": TtlMap, "set": TtlSet, "deque": BoundedDeque, "queue": BoundedQueue}[kind]
    extra: tuple[Any, ...] = (1.0,) if kind in ("ttl", "set") else ()
    with pytest.raises(ValueError):
        cls("x", 0, *extra, registry=registry)
    with pytest.raises(ValueError):
        cls("", 3, *extra, registry=registry)
    with pytest.raises(ValueError):
        cls("x", 3, *extra, "evict_oldest", registry=registry)
    if kind not in ("set",):
        with pytest.raises(ValueError):
            cls("x", 3, *extra, capacity_bytes=10, registry=registry)  # no sizeof
        with pytest.raises(ValueError):
            cls("x", 3, *extra, capacity_bytes=0, sizeof=len, registry=registry)


def test_ttl_must_be_positive(registry: ContainerRegistry) -> None:
    with pytest.raises(ValueError):
        TtlMap("x", 3, 0, registry=registry)
    with pytest.raises(ValueError):
        TtlSet("x", 3, -1.0, registry=registry)
    m: TtlMap[str, int] = TtlMap("x", 3, 1.0, registry=registry)
    with pytest.raises(ValueError):
        m.set("a", 1, 0.0, ttl=0)


# -- LruMap ------------------------------------------------------------------------------------


def test_lru_get_marks_used_and_peek_does_not(registry: ContainerRegistry) -> None:
    m: LruMap[str, int] = LruMap("t", 3, registry=registry)
    for k in "abc":
        m.set(k, ord(k))
    assert m.get("a") == ord("a")  # a is now the most recent
    assert m.peek("b") == ord("b")  # b stays the least recent
    m.set("d", 4)
    assert list(m) == ["c", "a", "d"]
    assert m["c"] == ord("c")
    m["e"] = 5
    assert "a" not in m and list(m) == ["d", "c", "e"]  # a was least recently used
    assert m.get("zz") is None and m.get("zz", 0) == 0 and m.peek("zz", -1) == -1
    assert dict(m.items()) == {"d": 4, "c": ord("c"), "e": 5}
    assert list(m.keys()) == ["d", "c", "e"] and list(m.values()) == [4, ord("c"), 5]


def test_lru_on_evict_sees_every_evicted_entry_but_not_pops(registry: ContainerRegistry) -> None:
    seen: list[tuple[str, int]] = []
    m: LruMap[str, int] = LruMap("t", 2, on_evict=lambda k, v: seen.append((k, v)), registry=registry)
    m.set("a", 1)
    m.set("b", 2)
    m.set("c", 3)
    assert seen == [("a", 1)]
    assert m.pop("b") == 2 and m.pop("b", -1) == -1
    assert m.popitem_oldest() == ("c", 3)
    m.set("x", 1)
    m.clear()
    assert seen == [("a", 1)]
    assert len(m) == 0


def test_lru_byte_capacity(registry: ContainerRegistry) -> None:
    seen: list[str] = []
    m: LruMap[str, bytes] = LruMap(
        "t", 100, capacity_bytes=10, sizeof=len, on_evict=lambda k, v: seen.append(k), registry=registry
    )
    m.set("a", b"1234")
    m.set("b", b"1234")
    assert m.nbytes == 8
    m.set("c", b"12345")  # 13 > 10: a goes
    assert seen == ["a"] and m.nbytes == 9
    m.set("b", b"1")  # replacing shrinks
    assert m.nbytes == 6
    m.set("b", b"123456")  # replacing grows: 11 > 10, c is evicted, b stays
    assert seen == ["a", "c"] and list(m) == ["b"] and m.nbytes == 6
    assert m.set("big", b"x" * 11) is False  # alone larger than the cap: always refused
    assert m.stats().rejections == 1 and "big" not in m
    s = m.stats()
    assert (s.bytes, s.capacity_bytes) == (6, 10)
    assert s.fill == pytest.approx(0.6)


def test_lru_byte_capacity_reject(registry: ContainerRegistry) -> None:
    m: LruMap[str, bytes] = LruMap("t", 100, Overflow.REJECT, capacity_bytes=10, sizeof=len, registry=registry)
    m.set("a", b"12345678")
    with pytest.raises(ContainerFull):
        m.set("b", b"123")
    with pytest.raises(ContainerFull):
        m.set("a", b"x" * 11)
    assert m.peek("a") == b"12345678" and m.nbytes == 8


# -- TtlMap / TtlSet ---------------------------------------------------------------------------


def test_ttl_expires_only_in_expire(registry: ContainerRegistry) -> None:
    m: TtlMap[str, int] = TtlMap("t", 10, 5.0, registry=registry)
    m.set("a", 1, now=0.0)
    m.set("b", 2, now=1.0)
    assert m.deadline("a") == 5.0 and m.next_deadline() == 5.0
    assert "a" in m and m.get("a") == 1  # long past its deadline, still there until expire()
    assert m.expire(4.999) == []
    assert m.expire(5.0) == [("a", 1)]  # a deadline equal to now is expired
    assert "a" not in m and m.deadline("a") is None
    assert m.next_deadline() == 6.0
    assert m.expire(100.0) == [("b", 2)]
    assert m.next_deadline() is None
    assert m.stats().expirations == 2 and m.stats().evictions == 0


def test_ttl_refresh_on_set_moves_the_deadline(registry: ContainerRegistry) -> None:
    m: TtlMap[str, str] = TtlMap("t", 10, 300.0, registry=registry)
    m.set("svc", "v1", now=0.0)
    m.set("svc", "v2", now=200.0)  # re-advertised: lives until 500, not 300
    assert m.deadline("svc") == 500.0 and m.next_deadline() == 500.0
    assert m.expire(300.0) == []
    assert m["svc"] == "v2"
    assert m.touch("svc", now=450.0) is True and m.deadline("svc") == 750.0
    assert m.touch("gone", now=450.0) is False
    assert m.expire(749.0) == [] and m.expire(750.0) == [("svc", "v2")]


def test_ttl_per_entry_ttl_and_ordering(registry: ContainerRegistry) -> None:
    m: TtlMap[str, int] = TtlMap("t", 10, 10.0, registry=registry)
    m.set("long", 1, now=0.0, ttl=100.0)
    m.set("short", 2, now=0.0, ttl=1.0)
    m.set("default", 3, now=0.0)
    assert m.next_deadline() == 1.0
    assert [k for k, _ in m.expire(50.0)] == ["short", "default"]
    assert m.keys() == ["long"] and m.values() == [1] and m.items() == [("long", 1)]


def test_ttl_pop_is_not_an_expiration_and_clears_the_deadline(registry: ContainerRegistry) -> None:
    m: TtlMap[str, int] = TtlMap("t", 10, 10.0, registry=registry)
    m.set("a", 1, now=0.0)
    m.set("b", 2, now=5.0)
    assert m.pop("a") == 1 and m.pop("a", -1) == -1
    assert m.next_deadline() == 15.0
    assert m.expire(20.0) == [("b", 2)]
    assert m.stats().expirations == 1


def test_ttl_evicts_the_entry_closest_to_its_deadline(registry: ContainerRegistry) -> None:
    seen: list[str] = []
    m: TtlMap[str, int] = TtlMap("t", 2, 10.0, on_evict=lambda k, v: seen.append(k), registry=registry)
    m.set("a", 1, now=0.0, ttl=50.0)
    m.set("b", 2, now=0.0, ttl=5.0)
    m.set("c", 3, now=1.0)
    assert seen == ["b"] and sorted(m) == ["a", "c"]
    m.set("a", 9, now=2.0, ttl=1.0)  # a present: replaced, nothing evicted
    assert seen == ["b"]
    m.set("d", 4, now=2.0)
    assert seen == ["b", "a"]


def test_ttl_byte_capacity(registry: ContainerRegistry) -> None:
    m: TtlMap[str, bytes] = TtlMap("t", 100, 10.0, capacity_bytes=8, sizeof=len, registry=registry)
    m.set("a", b"1234", now=0.0)
    m.set("b", b"1234", now=1.0)
    m.set("c", b"12", now=2.0)
    assert sorted(m) == ["b", "c"] and m.nbytes == 6
    m.expire(11.0)
    assert m.nbytes == 2 and m.stats().bytes == 2


def test_ttl_heap_stays_compact_under_refresh(registry: ContainerRegistry) -> None:
    m: TtlMap[int, int] = TtlMap("t", 10, 10.0, registry=registry)
    for i in range(10_000):
        m.set(i % 5, i, now=float(i))
    assert len(m) == 5
    assert len(m._heap) <= 2 * len(m) + 65
    assert m.next_deadline() == 9995.0 + 10.0


def test_ttl_set(registry: ContainerRegistry) -> None:
    s: TtlSet[str] = TtlSet("t.seen", 2, 10.0, registry=registry)
    assert (s.name, s.capacity, s.ttl) == ("t.seen", 2, 10.0)
    assert s.add("m1", now=0.0) is True
    assert s.add("m1", now=5.0) is False  # present: refreshed, not new
    assert s.next_deadline() == 15.0
    assert s.add("m2", now=6.0) is True
    assert "m1" in s and len(s) == 2 and sorted(s) == ["m1", "m2"]
    assert s.expire(15.0) == ["m1"]
    s.discard("m2")
    s.discard("never")
    assert len(s) == 0 and s.next_deadline() is None
    st = s.stats()
    assert isinstance(st, ContainerStats) and st.expirations == 1 and st.name == "t.seen"
    s.add("x", 0.0)
    s.clear()
    assert len(s) == 0


# -- BoundedDeque ------------------------------------------------------------------------------


def test_deque_fifo_and_on_evict(registry: ContainerRegistry) -> None:
    seen: list[int] = []
    d: BoundedDeque[int] = BoundedDeque("t", 3, on_evict=seen.append, registry=registry)
    assert not d
    for i in range(5):
        d.append(i)
    assert seen == [0, 1] and list(d) == [2, 3, 4] and bool(d)
    assert d.peekleft() == 2 and d.popleft() == 2
    assert d.drain() == [3, 4] and len(d) == 0
    with pytest.raises(IndexError):
        d.popleft()
    with pytest.raises(IndexError):
        d.peekleft()
    assert d.stats().peak == 3


def test_deque_byte_capacity(registry: ContainerRegistry) -> None:
    seen: list[bytes] = []
    d: BoundedDeque[bytes] = BoundedDeque(
        "t", 100, capacity_bytes=10, sizeof=len, on_evict=seen.append, registry=registry
    )
    d.append(b"aaaa")
    d.append(b"bbbb")
    d.append(b"cccccc")  # 14 > 10: evicts aaaa only
    assert seen == [b"aaaa"] and list(d) == [b"bbbb", b"cccccc"] and d.nbytes == 10
    assert d.append(b"x" * 11) is False and d.stats().rejections == 1
    d.popleft()
    assert d.nbytes == 6
    d.clear()
    assert d.nbytes == 0 and len(d) == 0


# -- statistics and the registry ----------------------------------------------------------------


def test_stats_fill_and_peak(registry: ContainerRegistry) -> None:
    m: LruMap[int, int] = LruMap("t", 4, registry=registry)
    for i in range(4):
        m.set(i, i)
    m.pop(0)
    m.pop(1)
    s = m.stats()
    assert (s.size, s.peak, s.kind) == (2, 4, "lru_map")
    assert s.fill == 0.5
    assert ContainerStats("x", "k", 1, 4, 1, 0, 0, 0, bytes=9, capacity_bytes=10).fill == 0.9


def test_registry_lists_live_containers_and_forgets_closed_ones(registry: ContainerRegistry) -> None:
    a: LruMap[int, int] = LruMap("b.second", 2, registry=registry)
    b: BoundedDeque[int] = BoundedDeque("a.first", 2, registry=registry)
    s: TtlSet[int] = TtlSet("c.third", 2, 1.0, registry=registry)
    assert [c.name for c in registry] == ["a.first", "b.second", "c.third"]
    assert len(registry) == 3
    assert all(isinstance(c, StatsSource) for c in registry)
    assert [st.name for st in registry.snapshot()] == ["a.first", "b.second", "c.third"]
    assert registry.find("b.second") == [a]
    a.set(1, 1)
    a.close()
    assert len(a) == 0
    assert [c.name for c in registry] == ["a.first", "c.third"]
    s.close()
    b.close()
    assert len(registry) == 0 and registry.snapshot() == []
    assert a not in list(REGISTRY)


def test_registry_forgets_garbage_collected_containers(registry: ContainerRegistry) -> None:
    def make() -> None:
        m: LruMap[int, int] = LruMap("tmp", 2, registry=registry)
        m.set(1, 1)
        cycle: list[Any] = [m]
        cycle.append(cycle)  # a reference cycle: only the cycle collector frees it
        assert len(registry) == 1

    make()
    gc.collect()
    assert len(registry) == 0 and registry.find("tmp") == []


def test_default_registry_is_the_process_one() -> None:
    m: LruMap[int, int] = LruMap("t.default-registry", 2)
    try:
        assert m in list(REGISTRY)
    finally:
        m.close()
    assert m not in list(REGISTRY)


# -- BoundedQueue (asyncio) --------------------------------------------------------------------


async def _until_waiting(q: BoundedQueue[Any]) -> None:
    """Yield to the loop until a getter is parked on ``q`` (a condition, not a timed sleep)."""
    await eventually(lambda: q._waiter is not None, interval=0, what="a getter parks on the queue")


async def test_queue_get_waits_for_a_put(registry: ContainerRegistry) -> None:
    q: BoundedQueue[int] = BoundedQueue("t.q", 4, registry=registry)
    getter = asyncio.create_task(q.get())
    await _until_waiting(q)
    assert not getter.done()
    assert q.put_nowait(7) is True
    assert await getter == 7
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


async def test_queue_put_nowait_never_blocks_and_drop_oldest_counts(registry: ContainerRegistry) -> None:
    q: BoundedQueue[int] = BoundedQueue("t.q", 3, registry=registry)
    for i in range(1000):  # no consumer at all: the producer is never stalled
        assert q.put_nowait(i) is True
    assert len(q) == 3
    assert [q.get_nowait() for _ in range(3)] == [997, 998, 999]
    s = q.stats()
    assert (s.evictions, s.peak, s.size, s.kind) == (997, 3, 0, "queue")


@pytest.mark.parametrize("ov", [Overflow.EVICT_OLDEST, Overflow.DROP_NEWEST])
async def test_queue_put_many_is_put_nowait_of_each(ov: Overflow, registry: ContainerRegistry) -> None:
    many: BoundedQueue[int] = BoundedQueue("t.many", 5, ov, registry=registry)
    one: BoundedQueue[int] = BoundedQueue("t.one", 5, ov, registry=registry)
    getter = asyncio.create_task(many.get())
    await _until_waiting(many)
    assert many.put_many([0, 1, 2]) == 3 and [one.put_nowait(i) for i in (0, 1, 2)] == [True] * 3
    assert await getter == 0 and one.get_nowait() == 0  # the waiting reader was woken
    for chunk in ([3], [4, 5, 6, 7], [], [8, 9, 10, 11, 12, 13]):
        accepted = many.put_many(chunk)
        assert accepted == sum(1 for i in chunk if one.put_nowait(i))
    rest = [many.get_nowait() for _ in range(len(many))]
    assert rest == [one.get_nowait() for _ in range(len(one))]
    assert rest == ([9, 10, 11, 12, 13] if ov is Overflow.EVICT_OLDEST else [1, 2, 3, 4, 5])
    a, b = many.stats(), one.stats()
    assert (a.evictions, a.rejections, a.peak) == (b.evictions, b.rejections, b.peak)
    many.close_queue()
    assert many.put_many([1, 2]) == 0


async def test_queue_byte_capacity(registry: ContainerRegistry) -> None:
    q: BoundedQueue[bytes] = BoundedQueue("t.q", 100, capacity_bytes=10, sizeof=len, registry=registry)
    q.put_nowait(b"aaaa")
    q.put_nowait(b"bbbb")
    q.put_nowait(b"cccc")
    assert q.nbytes == 8 and q.stats().evictions == 1
    assert q.put_nowait(b"x" * 11) is False
    assert await q.get() == b"bbbb" and q.nbytes == 4


async def test_close_queue_wakes_the_getter(registry: ContainerRegistry) -> None:
    q: BoundedQueue[int] = BoundedQueue("t.q", 4, registry=registry)
    getter = asyncio.create_task(q.get())
    await _until_waiting(q)
    reason = ConnectionError("node stopped")
    q.close_queue(reason)
    with pytest.raises(QueueClosed) as info:
        await getter
    assert info.value.__cause__ is reason
    assert q.closed and q.put_nowait(1) is False


async def test_closed_queue_drains_then_raises(registry: ContainerRegistry) -> None:
    q: BoundedQueue[int] = BoundedQueue("t.q", 4, registry=registry)
    q.put_nowait(1)
    q.put_nowait(2)
    q.close_queue()
    assert await q.get() == 1
    assert q.get_nowait() == 2
    with pytest.raises(QueueClosed):
        await q.get()
    with pytest.raises(QueueClosed):
        q.get_nowait()


async def test_queue_has_one_getter_and_survives_cancellation(registry: ContainerRegistry) -> None:
    q: BoundedQueue[int] = BoundedQueue("t.q", 4, registry=registry)
    first = asyncio.create_task(q.get())
    await _until_waiting(q)
    with pytest.raises(RuntimeError):
        await q.get()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    q.put_nowait(5)
    assert await q.get() == 5  # a new getter works after the first was cancelled


async def test_queue_close_leaves_registry(registry: ContainerRegistry) -> None:
    q: BoundedQueue[int] = BoundedQueue("t.q", 4, registry=registry)
    q.put_nowait(1)
    assert registry.find("t.q") == [q]
    q.close()
    assert registry.find("t.q") == [] and len(q) == 0 and q.closed


# -- BoundedDict and BoundedSet -------------------------------------------------------------------


def test_bounded_dict_is_a_dict_with_a_hard_cap_on_new_keys(registry: ContainerRegistry) -> None:
    d: BoundedDict[str, int] = BoundedDict("t.dict", 2, registry=registry)
    assert isinstance(d, dict) and d == {} and d.name == "t.dict" and d.capacity == 2
    d["a"] = 1
    d["b"] = 2
    d["a"] = 3  # replacing a value needs no room
    with pytest.raises(ContainerFull) as info:
        d["c"] = 4
    assert info.value.limit == "t.dict" and info.value.capacity == 2
    with pytest.raises(ContainerFull):
        d.setdefault("c", 4)
    assert d.setdefault("a", 9) == 3
    assert d == {"a": 3, "b": 2} and "c" not in d and d.get("c") is None
    assert sorted(d) == ["a", "b"] and list(d.items()) == [("a", 3), ("b", 2)]
    s = d.stats()
    assert (s.kind, s.size, s.capacity, s.peak, s.rejections, s.evictions) == ("dict", 2, 2, 2, 2, 0)
    assert d.pop("a") == 3
    del d["b"]
    d["c"] = 5  # room again
    assert d == {"c": 5} and d.stats().peak == 2


def test_bounded_dict_bulk_inserts_are_all_or_nothing(registry: ContainerRegistry) -> None:
    d: BoundedDict[str, int] = BoundedDict("t.dict", 3, registry=registry)
    d.update({"a": 1}, b=2)
    with pytest.raises(ContainerFull):
        d.update([("c", 3), ("d", 4)])
    with pytest.raises(ContainerFull):
        d |= {"c": 3, "d": 4}
    assert d == {"a": 1, "b": 2} and d.stats().rejections == 2
    d |= {"a": 10, "c": 3}
    assert d == {"a": 10, "b": 2, "c": 3} and d.stats().peak == 3
    with pytest.raises(TypeError):
        BoundedDict.fromkeys("xy")
    copy = d.copy()
    merged = d | {"z": 0}
    assert type(copy) is dict and type(merged) is dict and len(merged) == 4  # new containers are plain
    assert type(pickle.loads(pickle.dumps(d))) is dict and copy_module.copy(d) == d


def test_bounded_set_is_a_set_with_a_hard_cap_on_new_members(registry: ContainerRegistry) -> None:
    s: BoundedSet[int] = BoundedSet("t.plain_set", 3, registry=registry)
    assert isinstance(s, set) and s == set()
    s.add(1)
    s.add(1)
    s.update([2], {3})
    with pytest.raises(ContainerFull):
        s.add(4)
    with pytest.raises(ContainerFull):
        s |= {4, 5}
    with pytest.raises(ContainerFull):
        s ^= {1, 4, 5}  # 3 - 1 + 2 = 4 members
    s ^= {1, 4}
    assert s == {2, 3, 4} and isinstance(s, BoundedSet)
    s -= {2}
    s &= {3, 9}
    assert s == {3}
    assert type(s | {7}) is set and type(s.copy()) is set and type(copy_module.copy(s)) is set
    st = s.stats()
    assert (st.kind, st.size, st.capacity, st.peak, st.rejections) == ("set", 1, 3, 3, 3)
    with pytest.raises(TypeError):
        s |= [1]  # as for set: |= takes a set


@pytest.mark.parametrize("cls", [BoundedDict, BoundedSet])
def test_bounded_dict_and_set_register_and_close(cls: Any, registry: ContainerRegistry) -> None:
    c = cls("t.plain", 4, registry=registry)
    assert c in registry and [x.name for x in registry] == ["t.plain"]
    assert registry.snapshot()[0].kind == cls.kind
    with pytest.raises(ValueError):
        cls("t.plain", 0, registry=registry)
    with pytest.raises(ValueError):
        cls("", 4, registry=registry)
    with pytest.raises(TypeError):
        cls("t.plain", 4, registry)  # registry is keyword-only
    with pytest.raises(TypeError):
        hash(c)
    (c.__setitem__ if cls is BoundedDict else lambda k, _v: c.add(k))(1, 1)
    assert "t.plain" in repr(c)
    c.close()
    assert len(c) == 0 and len(registry) == 0
    d = cls("t.plain", 4, registry=registry)
    del d
    gc.collect()
    assert len(registry) == 0


def test_bounded_dict_default_registry_is_the_process_one() -> None:
    d: BoundedDict[int, int] = BoundedDict("t.process_dict", 1)
    assert d.registry is REGISTRY and d in REGISTRY
    d.close()
    assert d not in REGISTRY


# -- Tracked: the statistics base for bespoke structures ----------------------------------------------


class _Store(Tracked):
    kind = "store"

    def __init__(self, registry: ContainerRegistry) -> None:
        super().__init__("t.store", 3, capacity_bytes=10, registry=registry)
        self.ops: list[bytes] = []

    def _size(self) -> int:
        return len(self.ops)

    def _clear(self) -> None:
        self.ops.clear()
        self._bytes = 0

    def add(self, op: bytes) -> bool:
        if len(self.ops) >= self.capacity or self._bytes + len(op) > (self.capacity_bytes or 0):
            self.note_rejection()
            return False
        self.ops.append(op)
        self._bytes += len(op)
        self.note_size(len(self.ops))
        return True

    def drop_oldest(self, expired: bool) -> None:
        self._bytes -= len(self.ops.pop(0))
        (self.note_expiration if expired else self.note_eviction)()


def test_tracked_gives_any_structure_container_stats_and_registration(registry: ContainerRegistry) -> None:
    st = _Store(registry)
    assert isinstance(st, StatsSource) and st in registry
    assert [st.add(b"abcd"), st.add(b"efgh"), st.add(b"ijkl")] == [True, True, False]  # bytes cap
    st.drop_oldest(expired=True)
    st.drop_oldest(expired=False)
    s = st.stats()
    assert s == ContainerStats("t.store", "store", 0, 3, 2, 1, 1, 1, bytes=0, capacity_bytes=10)
    assert (st.peak, st.evictions, st.expirations, st.rejections) == (2, 1, 1, 1)
    with pytest.raises(ContainerFull):
        st.reject()
    assert st.rejections == 2
    st.close()
    assert st not in registry


def test_tracked_validates_and_needs_a_size(registry: ContainerRegistry) -> None:
    with pytest.raises(ValueError):
        Tracked("", 1, registry=registry)
    with pytest.raises(ValueError):
        Tracked("x", 0, registry=registry)
    with pytest.raises(ValueError):
        Tracked("x", 1, capacity_bytes=0, registry=registry)
    t = Tracked("x", 1, registry=registry)
    with pytest.raises(NotImplementedError):
        t.stats()
    t.close()  # nothing to clear by default
    assert len(registry) == 0


def test_a_ttl_map_and_the_node_core_deep_copy_without_itertools_state() -> None:
    """The simulator's tests copy a whole mesh (``copy.deepcopy``); Python 3.12 deprecated copying
    ``itertools`` objects and 3.14 removes it, so no ``TtlMap`` (in every swarm's tree) and no
    ``NodeCore`` holds one: their serials are plain ints, and a copied map goes on from the same."""
    import warnings
    from random import Random

    from quicmesh.config import NodeConfig
    from quicmesh.core.node import NodeCore
    from quicmesh.identity import KeyPair

    reg = ContainerRegistry("copy")
    m: TtlMap[str, int] = TtlMap("t.copy", 8, 10.0, registry=reg)
    m.set("a", 1, 0.0)
    core = NodeCore(KeyPair.generate(), NodeConfig(realm="copy"), Random(1), ContainerRegistry("core"))
    for obj in (m, core):
        assert not [k for k, v in vars(obj).items() if type(v).__module__ == "itertools"], obj
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3.12, 3.13: a DeprecationWarning for an itertools object
        twin = copy_module.deepcopy(m, {id(reg): reg})
    twin.set("b", 2, 1.0)
    m.set("c", 3, 1.0)
    assert sorted(twin.keys()) == ["a", "b"] and sorted(m.keys()) == ["a", "c"]
    assert twin.next_deadline() == m.next_deadline() == 10.0
