"""Stateful property tests: each bounded container against a plain-Python model.

Every machine draws its capacity, byte capacity and overflow policy, then runs random
operations. After each step it checks: size <= capacity, bytes <= capacity_bytes, the stats
counters (evictions, expirations, rejections, peak) equal the model's counts, and the contents
equal the model's. TTL machines also check that after ``expire(now)`` nothing with a deadline at
or before ``now`` remains, that ``expire`` returned exactly those entries, and ``next_deadline``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from quicmesh.bounded import (
    BoundedDeque,
    BoundedDict,
    BoundedSet,
    ContainerRegistry,
    LruMap,
    Overflow,
    TtlMap,
    TtlSet,
)
from quicmesh.bounded.aio import BoundedQueue
from quicmesh.errors import ContainerFull

SETTINGS = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

keys = st.integers(0, 7)
values = st.binary(max_size=6)
policies = st.sampled_from(list(Overflow))
byte_caps = st.one_of(st.none(), st.integers(1, 20))
ttls = st.sampled_from([0.5, 1.0, 2.5, 10.0])
steps = st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])


class _Counted(RuleBasedStateMachine):
    """Counters every model keeps, and the invariants they imply."""

    container: Any
    capacity: int
    capacity_bytes: int | None

    def __init__(self) -> None:
        super().__init__()
        self.registry = ContainerRegistry("stateful")
        self.evictions = 0
        self.expirations = 0
        self.rejections = 0
        self.peak = 0
        self.evicted_seen: list[Any] = []

    def model_size(self) -> int:
        raise NotImplementedError

    def model_bytes(self) -> int:
        raise NotImplementedError

    def note_peak(self) -> None:
        self.peak = max(self.peak, self.model_size())

    def refuse(self, overflow: Overflow, call: Any) -> None:
        """Run ``call`` that the model says must be refused, and check how it was refused."""
        self.rejections += 1
        if overflow is Overflow.REJECT:
            with pytest.raises(ContainerFull):
                call()
        else:
            assert call() is False

    @invariant()
    def bounded_and_counted(self) -> None:
        if not hasattr(self, "container"):
            return
        s = self.container.stats()
        assert s.size == self.model_size() <= self.capacity
        assert s.capacity == self.capacity
        if self.capacity_bytes is not None:
            assert s.bytes == self.model_bytes() <= self.capacity_bytes
        assert (s.evictions, s.expirations, s.rejections, s.peak) == (
            self.evictions,
            self.expirations,
            self.rejections,
            self.peak,
        )

    def teardown(self) -> None:
        if hasattr(self, "container"):
            self.container.close()
            assert len(self.registry) == 0


# -- LruMap ------------------------------------------------------------------------------------


class LruMachine(_Counted):
    @initialize(capacity=st.integers(1, 5), capacity_bytes=byte_caps, overflow=policies)
    def create(self, capacity: int, capacity_bytes: int | None, overflow: Overflow) -> None:
        self.capacity, self.capacity_bytes, self.overflow = capacity, capacity_bytes, overflow
        self.model: dict[int, bytes] = {}  # insertion order = use order, oldest first
        self.container = LruMap(
            "lru",
            capacity,
            overflow,
            capacity_bytes=capacity_bytes,
            sizeof=len if capacity_bytes is not None else None,
            on_evict=lambda k, v: self.evicted_seen.append((k, v)),
            registry=self.registry,
        )

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return sum(map(len, self.model.values()))

    def _fits(self, count: int, nbytes: int) -> bool:
        return count <= self.capacity and (self.capacity_bytes is None or nbytes <= self.capacity_bytes)

    @rule(key=keys, value=values)
    def set(self, key: int, value: bytes) -> None:
        m = self.model
        count = len(m) + (key not in m)
        nbytes = self.model_bytes() - len(m.get(key, b"")) + len(value)
        too_big = self.capacity_bytes is not None and len(value) > self.capacity_bytes
        if too_big or (not self._fits(count, nbytes) and self.overflow is not Overflow.EVICT_OLDEST):
            self.refuse(self.overflow, lambda: self.container.set(key, value))
            return
        expected_evicted = []
        for victim in [k for k in m if k != key]:
            if self._fits(count, nbytes):
                break
            expected_evicted.append((victim, m[victim]))
            nbytes -= len(m.pop(victim))
            count -= 1
        self.evicted_seen.clear()
        assert self.container.set(key, value) is True
        assert self.evicted_seen == expected_evicted
        self.evictions += len(expected_evicted)
        m.pop(key, None)
        m[key] = value
        self.note_peak()

    @rule(key=keys)
    def get(self, key: int) -> None:
        assert self.container.get(key) == self.model.get(key)
        if key in self.model:
            self.model[key] = self.model.pop(key)

    @rule(key=keys)
    def peek(self, key: int) -> None:
        assert self.container.peek(key) == self.model.get(key)

    @rule(key=keys)
    def pop(self, key: int) -> None:
        assert self.container.pop(key) == self.model.pop(key, None)

    @precondition(lambda self: bool(getattr(self, "model", None)))
    @rule()
    def popitem_oldest(self) -> None:
        oldest = next(iter(self.model))
        assert self.container.popitem_oldest() == (oldest, self.model.pop(oldest))

    @invariant()
    def same_contents_in_use_order(self) -> None:
        if hasattr(self, "container"):
            assert list(self.container.items()) == list(self.model.items())


# -- TtlMap ------------------------------------------------------------------------------------


class TtlMachine(_Counted):
    """Model: key -> (value, deadline, serial); the victim is the live entry with the smallest
    (deadline, serial), the serial counting successful sets."""

    @initialize(
        capacity=st.integers(1, 5), capacity_bytes=byte_caps, overflow=policies, ttl=ttls
    )
    def create(self, capacity: int, capacity_bytes: int | None, overflow: Overflow, ttl: float) -> None:
        self.capacity, self.capacity_bytes, self.overflow, self.ttl = capacity, capacity_bytes, overflow, ttl
        self.now = 0.0
        self.serial = 0
        self.model: dict[int, tuple[bytes, float, int]] = {}
        self.container = TtlMap(
            "ttl",
            capacity,
            ttl,
            overflow,
            capacity_bytes=capacity_bytes,
            sizeof=len if capacity_bytes is not None else None,
            on_evict=lambda k, v: self.evicted_seen.append((k, v)),
            registry=self.registry,
        )

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return sum(len(v) for v, _, _ in self.model.values())

    def _fits(self, count: int, nbytes: int) -> bool:
        return count <= self.capacity and (self.capacity_bytes is None or nbytes <= self.capacity_bytes)

    @rule(key=keys, value=values, ttl=st.one_of(st.none(), ttls))
    def set(self, key: int, value: bytes, ttl: float | None) -> None:
        m = self.model
        count = len(m) + (key not in m)
        nbytes = self.model_bytes() - (len(m[key][0]) if key in m else 0) + len(value)
        too_big = self.capacity_bytes is not None and len(value) > self.capacity_bytes
        if too_big or (not self._fits(count, nbytes) and self.overflow is not Overflow.EVICT_OLDEST):
            self.refuse(self.overflow, lambda: self.container.set(key, value, self.now, ttl))
            return
        expected_evicted = []
        order = sorted((k for k in m if k != key), key=lambda k: (m[k][1], m[k][2]))
        for victim in order:
            if self._fits(count, nbytes):
                break
            expected_evicted.append((victim, m[victim][0]))
            nbytes -= len(m.pop(victim)[0])
            count -= 1
        self.evicted_seen.clear()
        assert self.container.set(key, value, self.now, ttl) is True
        assert self.evicted_seen == expected_evicted
        self.evictions += len(expected_evicted)
        m[key] = (value, self.now + (self.ttl if ttl is None else ttl), self.serial)
        self.serial += 1
        self.note_peak()

    @rule(key=keys)
    def touch(self, key: int) -> None:
        present = key in self.model
        assert self.container.touch(key, self.now) is present
        if present:
            self.model[key] = (self.model[key][0], self.now + self.ttl, self.serial)
            self.serial += 1

    @rule(key=keys)
    def get(self, key: int) -> None:
        entry = self.model.get(key)
        assert self.container.get(key) == (None if entry is None else entry[0])
        assert self.container.deadline(key) == (None if entry is None else entry[1])

    @rule(key=keys)
    def pop(self, key: int) -> None:
        entry = self.model.pop(key, None)
        assert self.container.pop(key) == (None if entry is None else entry[0])

    @rule(dt=steps)
    def advance(self, dt: float) -> None:
        """Time passes; nothing expires until expire() is called."""
        self.now += dt

    @rule()
    def expire(self) -> None:
        due = sorted((k for k, e in self.model.items() if e[1] <= self.now), key=lambda k: self.model[k][1:])
        expected = [(k, self.model.pop(k)[0]) for k in due]
        assert self.container.expire(self.now) == expected
        self.expirations += len(expected)
        assert all(self.container.deadline(k) > self.now for k in self.container)

    @invariant()
    def same_contents_and_next_deadline(self) -> None:
        if not hasattr(self, "container"):
            return
        assert sorted(self.container.items()) == sorted((k, e[0]) for k, e in self.model.items())
        assert self.container.next_deadline() == min((e[1] for e in self.model.values()), default=None)
        assert len(self.container._heap) <= 2 * len(self.model) + 65


# -- TtlSet ------------------------------------------------------------------------------------


class TtlSetMachine(_Counted):
    @initialize(capacity=st.integers(1, 5), overflow=policies, ttl=ttls)
    def create(self, capacity: int, overflow: Overflow, ttl: float) -> None:
        self.capacity, self.capacity_bytes, self.overflow, self.ttl = capacity, None, overflow, ttl
        self.now = 0.0
        self.serial = 0
        self.model: dict[int, tuple[float, int]] = {}
        self.container = TtlSet("set", capacity, ttl, overflow, registry=self.registry)

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return 0

    @rule(key=keys)
    def add(self, key: int) -> None:
        m = self.model
        if key not in m and len(m) >= self.capacity:
            if self.overflow is not Overflow.EVICT_OLDEST:
                self.refuse(self.overflow, lambda: self.container.add(key, self.now))
                return
            victim = min(m, key=lambda k: m[k])
            del m[victim]
            self.evictions += 1
        fresh = key not in m
        assert self.container.add(key, self.now) is fresh
        m[key] = (self.now + self.ttl, self.serial)
        self.serial += 1
        self.note_peak()

    @rule(key=keys)
    def discard(self, key: int) -> None:
        self.model.pop(key, None)
        self.container.discard(key)

    @rule(dt=steps)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def expire(self) -> None:
        due = sorted((k for k, e in self.model.items() if e[0] <= self.now), key=lambda k: self.model[k])
        for k in due:
            del self.model[k]
        assert self.container.expire(self.now) == due
        self.expirations += len(due)

    @invariant()
    def same_members(self) -> None:
        if not hasattr(self, "container"):
            return
        assert sorted(self.container) == sorted(self.model)
        assert self.container.next_deadline() == min((e[0] for e in self.model.values()), default=None)


# -- BoundedDeque ------------------------------------------------------------------------------


class DequeMachine(_Counted):
    @initialize(capacity=st.integers(1, 5), capacity_bytes=byte_caps, overflow=policies)
    def create(self, capacity: int, capacity_bytes: int | None, overflow: Overflow) -> None:
        self.capacity, self.capacity_bytes, self.overflow = capacity, capacity_bytes, overflow
        self.model: list[bytes] = []
        self.container = BoundedDeque(
            "deque",
            capacity,
            overflow,
            capacity_bytes=capacity_bytes,
            sizeof=len if capacity_bytes is not None else None,
            on_evict=self.evicted_seen.append,
            registry=self.registry,
        )

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return sum(map(len, self.model))

    def _fits(self, count: int, nbytes: int) -> bool:
        return count <= self.capacity and (self.capacity_bytes is None or nbytes <= self.capacity_bytes)

    @rule(item=values)
    def append(self, item: bytes) -> None:
        count, nbytes = len(self.model) + 1, self.model_bytes() + len(item)
        too_big = self.capacity_bytes is not None and len(item) > self.capacity_bytes
        if too_big or (not self._fits(count, nbytes) and self.overflow is not Overflow.EVICT_OLDEST):
            self.refuse(self.overflow, lambda: self.container.append(item))
            return
        expected = []
        while not self._fits(count, nbytes):
            victim = self.model.pop(0)
            expected.append(victim)
            count, nbytes = count - 1, nbytes - len(victim)
        self.evicted_seen.clear()
        assert self.container.append(item) is True
        assert self.evicted_seen == expected
        self.evictions += len(expected)
        self.model.append(item)
        self.note_peak()

    @precondition(lambda self: bool(getattr(self, "model", None)))
    @rule()
    def popleft(self) -> None:
        assert self.container.peekleft() == self.model[0]
        assert self.container.popleft() == self.model.pop(0)

    @rule()
    def drain_sometimes(self) -> None:
        if len(self.model) == self.capacity:
            assert self.container.drain() == self.model
            self.model.clear()

    @invariant()
    def same_items(self) -> None:
        if hasattr(self, "container"):
            assert list(self.container) == self.model
            assert self.container.nbytes == (self.model_bytes() if self.capacity_bytes is not None else 0)


# -- BoundedQueue: the same overflow policy as the deque, through put_nowait and put_many ----------


class QueueMachine(_Counted):
    @initialize(capacity=st.integers(1, 5), capacity_bytes=byte_caps, overflow=policies)
    def create(self, capacity: int, capacity_bytes: int | None, overflow: Overflow) -> None:
        self.capacity, self.capacity_bytes, self.overflow = capacity, capacity_bytes, overflow
        self.model: list[bytes] = []
        self.container = BoundedQueue(
            "queue", capacity, overflow, capacity_bytes=capacity_bytes,
            sizeof=len if capacity_bytes is not None else None, registry=self.registry,
        )

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return sum(map(len, self.model))

    def _fits(self, count: int, nbytes: int) -> bool:
        return count <= self.capacity and (self.capacity_bytes is None or nbytes <= self.capacity_bytes)

    def _model_put(self, item: bytes) -> bool | None:
        """The model of put_nowait: True accepted, False dropped, None raised (REJECT)."""
        count, nbytes = len(self.model) + 1, self.model_bytes() + len(item)
        too_big = self.capacity_bytes is not None and len(item) > self.capacity_bytes
        if too_big or (not self._fits(count, nbytes) and self.overflow is not Overflow.EVICT_OLDEST):
            self.rejections += 1
            return None if self.overflow is Overflow.REJECT else False
        while not self._fits(count, nbytes):
            victim = self.model.pop(0)
            count, nbytes = count - 1, nbytes - len(victim)
            self.evictions += 1
        self.model.append(item)
        self.note_peak()
        return True

    @rule(item=values)
    def put_nowait(self, item: bytes) -> None:
        expected = self._model_put(item)
        if expected is None:
            with pytest.raises(ContainerFull):
                self.container.put_nowait(item)
        else:
            assert self.container.put_nowait(item) is expected

    @rule(items=st.lists(values, max_size=7))
    def put_many(self, items: list[bytes]) -> None:
        accepted = 0
        for item in items:
            outcome = self._model_put(item)
            if outcome is None:
                with pytest.raises(ContainerFull):
                    self.container.put_many(items)
                return
            accepted += outcome
        assert self.container.put_many(items) == accepted

    @precondition(lambda self: bool(getattr(self, "model", None)))
    @rule()
    def get_nowait(self) -> None:
        assert self.container.get_nowait() == self.model.pop(0)

    @invariant()
    def same_items(self) -> None:
        if hasattr(self, "container"):
            assert list(self.container._items) == self.model
            assert self.container.nbytes == (self.model_bytes() if self.capacity_bytes is not None else 0)


# -- BoundedDict / BoundedSet: a hard cap on new keys, all-or-nothing bulk inserts -------------------

key_lists = st.lists(keys, max_size=6)


class DictMachine(_Counted):
    @initialize(capacity=st.integers(1, 5))
    def create(self, capacity: int) -> None:
        self.capacity, self.capacity_bytes = capacity, None
        self.model: dict[int, bytes] = {}
        self.container: BoundedDict[int, bytes] = BoundedDict("dict", capacity, registry=self.registry)

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return 0

    def _adds(self, new: dict[int, bytes], call: Any) -> None:
        """``call`` adds ``new``'s keys to the container: all of them, or none and ContainerFull."""
        if len(self.model.keys() | new.keys()) > self.capacity:
            self.rejections += 1
            with pytest.raises(ContainerFull):
                call()
            return
        call()
        self.model.update(new)
        self.note_peak()

    @rule(key=keys, value=values)
    def setitem(self, key: int, value: bytes) -> None:
        self._adds({key: value}, lambda: self.container.__setitem__(key, value))

    @rule(key=keys, value=values)
    def setdefault(self, key: int, value: bytes) -> None:
        if key in self.model:
            assert self.container.setdefault(key, value) == self.model[key]
            return
        self._adds({key: value}, lambda: self.container.setdefault(key, value))

    @rule(ks=key_lists, value=values, how=st.sampled_from(["update", "pairs", "ior"]))
    def update(self, ks: list[int], value: bytes, how: str) -> None:
        new = dict.fromkeys(ks, value)
        if how == "update":
            self._adds(new, lambda: self.container.update(new))
        elif how == "pairs":
            self._adds(new, lambda: self.container.update(list(new.items())))
        else:
            def ior() -> None:
                c = self.container
                c |= new
                assert c is self.container
            self._adds(new, ior)

    @rule(key=keys)
    def pop(self, key: int) -> None:
        assert self.container.pop(key, None) == self.model.pop(key, None)

    @rule()
    def clear_when_full(self) -> None:
        if len(self.model) == self.capacity:
            self.container.clear()
            self.model.clear()

    @invariant()
    def same_items(self) -> None:
        if hasattr(self, "container"):
            assert dict(self.container) == self.model
            assert isinstance(self.container, dict)


class SetMachine(_Counted):
    @initialize(capacity=st.integers(1, 5))
    def create(self, capacity: int) -> None:
        self.capacity, self.capacity_bytes = capacity, None
        self.model: set[int] = set()
        self.container: BoundedSet[int] = BoundedSet("set", capacity, registry=self.registry)

    def model_size(self) -> int:
        return len(self.model)

    def model_bytes(self) -> int:
        return 0

    def _becomes(self, after: set[int], call: Any) -> None:
        if len(after) > self.capacity:
            self.rejections += 1
            with pytest.raises(ContainerFull):
                call()
            return
        call()
        self.model = after
        self.note_peak()

    @rule(key=keys)
    def add(self, key: int) -> None:
        self._becomes(self.model | {key}, lambda: self.container.add(key))

    @rule(a=key_lists, b=key_lists, how=st.sampled_from(["update", "ior"]))
    def update(self, a: list[int], b: list[int], how: str) -> None:
        if how == "update":
            self._becomes(self.model | set(a) | set(b), lambda: self.container.update(a, b))
        else:
            def ior() -> None:
                c = self.container
                c |= set(a)
                assert c is self.container
            self._becomes(self.model | set(a), ior)

    @rule(a=key_lists, how=st.sampled_from(["method", "ixor"]))
    def symmetric_difference(self, a: list[int], how: str) -> None:
        if how == "method":
            self._becomes(self.model ^ set(a), lambda: self.container.symmetric_difference_update(a))
        else:
            def ixor() -> None:
                c = self.container
                c ^= set(a)
                assert c is self.container
            self._becomes(self.model ^ set(a), ixor)

    @rule(key=keys)
    def discard(self, key: int) -> None:
        self.container.discard(key)
        self.model.discard(key)

    @rule(a=key_lists)
    def intersection_update(self, a: list[int]) -> None:
        self.container &= set(a)
        self.model &= set(a)

    @invariant()
    def same_members(self) -> None:
        if hasattr(self, "container"):
            assert set(self.container) == self.model
            assert isinstance(self.container, BoundedSet)


TestLruMap = LruMachine.TestCase
TestTtlMap = TtlMachine.TestCase
TestTtlSet = TtlSetMachine.TestCase
TestBoundedDeque = DequeMachine.TestCase
TestBoundedQueue = QueueMachine.TestCase
TestBoundedDict = DictMachine.TestCase
TestBoundedSet = SetMachine.TestCase
TestLruMap.settings = SETTINGS
TestTtlMap.settings = SETTINGS
TestTtlSet.settings = SETTINGS
TestBoundedDeque.settings = SETTINGS
TestBoundedQueue.settings = SETTINGS
TestBoundedDict.settings = SETTINGS
TestBoundedSet.settings = SETTINGS


def test_every_machine_runs_at_least_200_examples() -> None:
    for case in (TestLruMap, TestTtlMap, TestTtlSet, TestBoundedDeque, TestBoundedQueue, TestBoundedDict,
                 TestBoundedSet):
        assert case.settings.max_examples >= 200
        assert case.settings.stateful_step_count >= 30
