"""LRU map, TTL map and TTL set: the keyed bounded containers.

``LruMap`` orders entries by use; a full map evicts the least recently used one.
``TtlMap`` gives each entry a deadline; ``expire(now)`` removes every entry whose deadline has
passed, and a full map evicts the entry closest to its deadline. Re-inserting a key refreshes its
deadline (the Erlang mesh we learn from did not, and dropped live services).

All operations are O(1) amortised except ``TtlMap.expire`` and eviction, which are
O(log n) per removed entry (a heap with lazy deletion, compacted when stale entries outnumber
live ones). ``TtlMap.next_deadline`` is O(1): the map keeps its earliest live deadline up to date
itself (every operation that can change it updates or re-seeks it), because state machines ask it
after every event.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, Generic, TypeVar, overload

from ._base import ContainerRegistry, ContainerStats, Overflow, Watch, _Bounded

__all__ = ["LruMap", "TtlMap", "TtlSet"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_MISSING: Any = object()


class LruMap(_Bounded, Generic[K, V]):
    """A mapping capped in entries (and optionally bytes) that evicts least recently used.

    ``get`` and ``set`` mark an entry as used; ``peek`` does not. ``on_evict(key, value)`` is
    called for every entry removed by eviction (not by ``pop``), so that an evicted connection
    can be closed, for example.
    """

    kind = "lru_map"

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: Overflow = Overflow.EVICT_OLDEST,
        *,
        capacity_bytes: int | None = None,
        sizeof: Callable[[V], int] | None = None,
        on_evict: Callable[[K, V], None] | None = None,
        registry: ContainerRegistry | None = None,
    ) -> None:
        super().__init__(
            name, capacity, overflow, capacity_bytes=capacity_bytes, sizeof=sizeof, registry=registry
        )
        self._data: OrderedDict[K, V] = OrderedDict()  # bounded: capacity enforced in set()
        self._on_evict = on_evict
        self._watch: Watch | None = None

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever the membership changes (an insert, a removal; not a use)."""
        self._watch = w
        w.dirty = True

    def _size(self) -> int:
        return len(self._data)

    def _clear(self) -> None:
        self._data.clear()
        self._bytes = 0
        if self._watch is not None:
            self._watch.dirty = True

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def __getitem__(self, key: K) -> V:
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self.set(key, value)

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: Any = None) -> Any:
        """The value for ``key`` (marking it used), or ``default``."""
        data = self._data  # #14: inline, not through __getitem__ (a call fewer per lookup)
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return default
        data.move_to_end(key)
        return value

    def peek(self, key: K, default: D | None = None) -> V | D | None:
        """The value for ``key`` without marking it used."""
        return self._data.get(key, default)

    def set(self, key: K, value: V) -> bool:
        """Insert or replace. Returns ``False`` when refused by ``DROP_NEWEST``.

        Raises :class:`~quicmesh.errors.ContainerFull` when refused by ``REJECT``.
        A value that alone exceeds ``capacity_bytes`` is always refused.
        """
        data = self._data
        if self._unsized and (key in data or len(data) < self._capacity):
            # the common case (#14): no byte accounting, and room or a replacement
            data[key] = value
            data.move_to_end(key)
            if len(data) > self._peak:
                self._peak = len(data)
            if self._watch is not None:
                self._watch.dirty = True
            return True
        size = self._sizeof(value)
        old = self._data.get(key, _MISSING)
        old_size = self._sizeof(old) if old is not _MISSING else 0
        count_after = len(self._data) + (0 if old is not _MISSING else 1)
        bytes_after = self._bytes - old_size + size
        if self._capacity_bytes is not None and size > self._capacity_bytes:
            return self._refuse()
        if not self._fits(count_after, bytes_after):
            if self._overflow is not Overflow.EVICT_OLDEST:
                return self._refuse()
            while self._data and not self._fits(count_after, bytes_after):
                victim = next(iter(self._data))
                if victim == key:
                    self._data.move_to_end(victim)
                    victim = next(iter(self._data))
                    if victim == key:
                        break
                vvalue = self._data.pop(victim)
                vsize = self._sizeof(vvalue)
                self._bytes -= vsize
                bytes_after -= vsize
                count_after -= 1
                self._evictions += 1
                if self._on_evict is not None:
                    self._on_evict(victim, vvalue)
        if old is not _MISSING:
            self._bytes -= old_size
        self._data[key] = value
        self._data.move_to_end(key)
        self._bytes += size
        self._note_size(len(self._data))
        if self._watch is not None:
            self._watch.dirty = True
        return True

    def pop(self, key: K, default: D | None = None) -> V | D | None:
        """Remove ``key`` and return its value (no eviction callback), or ``default``."""
        value = self._data.pop(key, _MISSING)
        if value is _MISSING:
            return default
        self._bytes -= self._sizeof(value)
        if self._watch is not None:
            self._watch.dirty = True
        return value  # type: ignore[no-any-return]

    def popitem_oldest(self) -> tuple[K, V]:
        """Remove and return the least recently used entry (no eviction callback)."""
        key, value = self._data.popitem(last=False)
        self._bytes -= self._sizeof(value)
        if self._watch is not None:
            self._watch.dirty = True
        return key, value

    def clear(self) -> None:
        """Remove every entry (no eviction callbacks)."""
        self._clear()

    def keys(self) -> KeysView[K]:
        """A live view of the keys, least recently used first (does not mark them used)."""
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        """A live view of the values, least recently used first."""
        return self._data.values()

    def items(self) -> ItemsView[K, V]:
        """A live view of the ``(key, value)`` pairs, least recently used first."""
        return self._data.items()


class TtlMap(_Bounded, Generic[K, V]):
    """A mapping whose entries expire ``ttl`` seconds after they were last set.

    Expiry happens only inside :meth:`expire`; between two calls an entry past its deadline is
    still visible. Each ``set`` may give its own ``ttl``. ``next_deadline()`` tells the owner
    when to call ``expire`` next, so a state machine can arm one timer for it.
    """

    kind = "ttl_map"

    def __init__(
        self,
        name: str,
        capacity: int,
        ttl: float,
        overflow: Overflow = Overflow.EVICT_OLDEST,
        *,
        capacity_bytes: int | None = None,
        sizeof: Callable[[V], int] | None = None,
        on_evict: Callable[[K, V], None] | None = None,
        registry: ContainerRegistry | None = None,
        touch_granularity: float = 0.0,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"{name}: ttl must be positive, got {ttl!r}")
        if not touch_granularity >= 0:
            raise ValueError(f"{name}: touch_granularity must be >= 0, got {touch_granularity!r}")
        super().__init__(
            name, capacity, overflow, capacity_bytes=capacity_bytes, sizeof=sizeof, registry=registry
        )
        self.ttl = float(ttl)
        # key -> (value, deadline, serial, size); serial identifies the live heap entry, size is
        # sizeof(value) taken once at insert (a removal does not measure the value again)
        self._data: dict[K, tuple[V, float, int, int]] = {}  # bounded: capacity enforced in set()
        self._heap: list[tuple[float, int, K]] = []  # bounded: compacted to <= 2 * size + 64
        self._serial = 0  # an int, not itertools.count: the map stays deep-copyable on Python 3.14
        self._on_evict = on_evict
        self._earliest: float | None = None
        """The earliest deadline of a live entry (``None``: empty), exact unless :attr:`_stale`:
        an insert lowers it, and a removal of the entry that held it marks it stale (the next
        :meth:`next_deadline` re-seeks it, :meth:`_reseek`)."""
        self._stale = False
        """#14: the entry holding :attr:`_earliest` was popped and nothing re-sought it yet (it is
        then at most the true earliest). A call's tables pop their earliest entry at every reply:
        re-seeking at once cost each pop a heap pop and a call; now the stale heads go in bulk,
        at the next :meth:`next_deadline` or compaction."""
        self._watch: Watch | None = None
        self.touch_granularity = float(touch_granularity)
        """A :meth:`touch` that would move an entry's deadline later by less than this leaves it
        as it is (#14): an idle timeout of minutes renewed by every message then moves the map's
        earliest deadline, and its owner's timer, once per ``touch_granularity`` rather than per
        message, and the entry expires at most this much before ``ttl`` after its last touch."""

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever :meth:`next_deadline` changes."""
        self._watch = w
        w.dirty = True

    def _size(self) -> int:
        return len(self._data)

    def _clear(self) -> None:
        self._data.clear()
        self._heap.clear()
        self._bytes = 0
        self._stale = False
        if self._earliest is not None:
            self._earliest = None
            if self._watch is not None:
                self._watch.dirty = True

    def _reseek(self) -> None:
        """Recompute :attr:`_earliest` from the heap, dropping stale heads on the way."""
        self._stale = False
        heap, data = self._heap, self._data
        earliest: float | None = None
        if not data:
            heap.clear()
        else:
            while heap:
                deadline, serial, key = heap[0]
                entry = data.get(key)
                if entry is not None and entry[2] == serial:
                    earliest = deadline
                    break
                heapq.heappop(heap)
        if earliest != self._earliest:
            self._earliest = earliest
            if self._watch is not None:
                self._watch.dirty = True

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def __getitem__(self, key: K) -> V:
        return self._data[key][0]

    def get(self, key: K, default: D | None = None) -> V | D | None:
        """The value for ``key`` or ``default`` (does not refresh the deadline)."""
        entry = self._data.get(key)
        return default if entry is None else entry[0]

    def deadline(self, key: K) -> float | None:
        """When ``key`` expires, or ``None`` when absent."""
        entry = self._data.get(key)
        return None if entry is None else entry[1]

    def live(self, key: K, now: float) -> V | None:
        """The value for ``key`` if its deadline is after ``now`` (an expired entry may still be
        held until :meth:`expire`), else ``None``."""
        entry = self._data.get(key)
        return entry[0] if entry is not None and entry[1] > now else None

    def set(self, key: K, value: V, now: float, ttl: float | None = None) -> bool:
        """Insert or replace ``key``, expiring at ``now + ttl`` (default: the map's ttl).

        Returns ``False`` when refused by ``DROP_NEWEST``; raises
        :class:`~quicmesh.errors.ContainerFull` when refused by ``REJECT``.
        """
        life = self.ttl if ttl is None else float(ttl)
        if not life > 0:
            raise ValueError(f"{self._name}: ttl must be positive, got {ttl!r}")
        data = self._data
        size = 0 if self._unsized else self._sizeof(value)
        cap_bytes = self._capacity_bytes
        if len(data) < self._capacity and key not in data and (cap_bytes is None or self._bytes + size <= cap_bytes):
            # the common case (#14): a new key with room for it (in entries and bytes)
            serial = self._serial = self._serial + 1
            deadline = now + life
            data[key] = (value, deadline, serial, size)
            self._bytes += size
            heap = self._heap
            heapq.heappush(heap, (deadline, serial, key))
            n = len(data)
            if n > self._peak:
                self._peak = n
            if len(heap) > 2 * n + 64:
                self._maybe_compact()
            earliest = self._earliest
            if earliest is None or deadline < earliest:  # (stale, it is at most the true earliest)
                self._earliest = deadline
                self._stale = False
                if self._watch is not None:
                    self._watch.dirty = True
            return True
        if self._stale:  # the bookkeeping below needs the exact earliest
            self._reseek()
        old = self._data.get(key)
        old_size = old[3] if old is not None else 0
        count_after = len(self._data) + (0 if old is not None else 1)
        bytes_after = self._bytes - old_size + size
        if self._capacity_bytes is not None and size > self._capacity_bytes:
            return self._refuse()
        evicted = False
        if not self._fits(count_after, bytes_after):
            if self._overflow is not Overflow.EVICT_OLDEST:
                return self._refuse()
            while not self._fits(count_after, bytes_after):
                victim = self._pop_soonest(exclude=key)
                if victim is None:
                    break
                evicted = True
                bytes_after -= victim[2]
                count_after -= 1
                self._evictions += 1
                if self._on_evict is not None:
                    self._reseek()  # exact for the callback too
                    self._on_evict(victim[0], victim[1])
        if old is not None:
            self._bytes -= old_size
        serial = self._serial = self._serial + 1
        deadline = now + life
        self._data[key] = (value, deadline, serial, size)
        self._bytes += size
        heapq.heappush(self._heap, (deadline, serial, key))
        self._note_size(len(self._data))
        self._maybe_compact()
        earliest = self._earliest
        if evicted or (old is not None and earliest is not None and old[1] <= earliest):
            self._reseek()  # the entry holding the earliest deadline may be gone or later now
        elif earliest is None or deadline < earliest:
            self._earliest = deadline
            if self._watch is not None:
                self._watch.dirty = True
        return True

    def touch(self, key: K, now: float, ttl: float | None = None) -> bool:
        """Refresh ``key``'s deadline to ``now + ttl``; ``False`` when absent. With a
        :attr:`touch_granularity`, a deadline that would move later by less than it is kept."""
        entry = self._data.get(key)
        if entry is None:
            return False
        step = self.touch_granularity
        if step:
            life = self.ttl if ttl is None else float(ttl)
            if life > 0 and 0.0 <= now + life - entry[1] < step:
                return True
        return self.set(key, entry[0], now, ttl)

    def pop(self, key: K, default: D | None = None) -> V | D | None:
        """Remove ``key`` and return its value, or ``default``. Not counted as an expiration."""
        entry = self._data.pop(key, None)
        if entry is None:
            return default
        self._bytes -= entry[3]
        if len(self._heap) > 2 * len(self._data) + 64:
            self._maybe_compact()
        earliest = self._earliest
        if earliest is not None and entry[1] <= earliest and not self._stale:
            self._stale = True  # re-sought by the next next_deadline(), not per pop (#14)
            if self._watch is not None:
                self._watch.dirty = True
        return entry[0]

    def clear(self) -> None:
        """Remove every entry."""
        self._clear()

    def expire(self, now: float) -> list[tuple[K, V]]:
        """Remove and return every entry whose deadline is at or before ``now``."""
        out: list[tuple[K, V]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _deadline, serial, key = heapq.heappop(heap)
            entry = self._data.get(key)
            if entry is None or entry[2] != serial:
                continue
            del self._data[key]
            self._bytes -= entry[3]
            self._expirations += 1
            out.append((key, entry[0]))
        if out:
            self._reseek()
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live entry, or ``None`` when empty (O(1) amortised: kept up
        to date by every operation but a pop of the earliest entry, re-sought here after one)."""
        if self._stale:
            self._reseek()
        return self._earliest

    def keys(self) -> list[K]:
        """A copy of the keys, in insertion order."""
        return list(self._data)

    def values(self) -> list[V]:
        """A copy of the values, in insertion order."""
        return [e[0] for e in self._data.values()]

    def items(self) -> list[tuple[K, V]]:
        """A copy of the ``(key, value)`` pairs, in insertion order."""
        return [(k, e[0]) for k, e in self._data.items()]

    def _pop_soonest(self, exclude: K) -> tuple[K, V, int] | None:
        """Remove the live entry with the earliest deadline other than ``exclude``: its key,
        value and size."""
        heap = self._heap
        skipped: list[tuple[float, int, K]] = []
        result: tuple[K, V, int] | None = None
        while heap:
            item = heapq.heappop(heap)
            entry = self._data.get(item[2])
            if entry is None or entry[2] != item[1]:
                continue
            if item[2] == exclude:
                skipped.append(item)
                continue
            del self._data[item[2]]
            self._bytes -= entry[3]
            result = (item[2], entry[0], entry[3])
            break
        for item in skipped:
            heapq.heappush(heap, item)
        return result

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._data) + 64:
            self._heap = [(e[1], e[2], k) for k, e in self._data.items()]  # bounded: one per live entry
            heapq.heapify(self._heap)


class TtlSet(Generic[K]):
    """A set whose members expire ``ttl`` seconds after they were last added.

    A thin face over :class:`TtlMap`; typical use is a seen-message-id cache.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        ttl: float,
        overflow: Overflow = Overflow.EVICT_OLDEST,
        *,
        registry: ContainerRegistry | None = None,
    ) -> None:
        self._map: TtlMap[K, None] = TtlMap(name, capacity, ttl, overflow, registry=registry)

    @property
    def name(self) -> str:
        """The set's name, as shown in metrics."""
        return self._map.name

    @property
    def capacity(self) -> int:
        """The maximum number of members."""
        return self._map.capacity

    @property
    def ttl(self) -> float:
        """Seconds a member lives after it was last added."""
        return self._map.ttl

    def add(self, key: K, now: float) -> bool:
        """Add ``key`` (refreshing it when present). ``True`` when it was not present before."""
        fresh = key not in self._map
        accepted = self._map.set(key, None, now)
        return fresh and accepted

    def discard(self, key: K) -> None:
        """Remove ``key`` when present (not counted as an expiration)."""
        self._map.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __len__(self) -> int:
        return len(self._map)

    def __iter__(self) -> Iterator[K]:
        return iter(self._map)

    def expire(self, now: float) -> list[K]:
        """Remove and return the members whose deadline passed."""
        return [k for k, _ in self._map.expire(now)]

    def next_deadline(self) -> float | None:
        """The earliest deadline of a member, or ``None`` when empty."""
        return self._map.next_deadline()

    def watch(self, w: Watch) -> None:
        """Set ``w.dirty`` whenever :meth:`next_deadline` changes."""
        self._map.watch(w)

    def clear(self) -> None:
        """Remove every member."""
        self._map.clear()

    def stats(self) -> ContainerStats:
        """Frozen :class:`ContainerStats` (kind ``ttl_map``)."""
        return self._map.stats()

    def close(self) -> None:
        """Drop every member and leave the registry."""
        self._map.close()
