"""A registry's containers grouped by ``(name, kind)``, with counters that never go back.

Several containers may share a name (one subscriber queue per subscription, for example);
instances are *summed* (size, capacity, bytes, capacity_bytes and the counters), ``peak`` and
``fill`` are the *largest of any one instance*. A container that leaves the registry takes its
counters with it, so :class:`ContainerAggregator` folds its last seen counters into a per-name
"retired" total: exported sums stay monotonic. Used by /metrics, /health and the leak sentinel.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..bounded import ContainerRegistry

__all__ = ["ContainerAggregator", "ContainerGroup"]


@dataclass(frozen=True, slots=True)
class ContainerGroup:
    """The containers of one registry sharing a ``(name, kind)``, aggregated."""

    name: str
    kind: str
    instances: int
    size: int
    capacity: int
    peak: int
    fill: float
    evictions: int
    expirations: int
    rejections: int
    bytes: int | None
    capacity_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for /health)."""
        return {
            "kind": self.kind,
            "instances": self.instances,
            "size": self.size,
            "capacity": self.capacity,
            "fill": round(self.fill, 4),
            "peak": self.peak,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "rejections": self.rejections,
            "bytes": self.bytes,
            "capacity_bytes": self.capacity_bytes,
        }


_Key = tuple[str, str]
_Seen = tuple[Callable[[], Any], _Key, tuple[int, int, int]]


class ContainerAggregator:
    """Groups a registry's containers by ``(name, kind)`` with counters that never go back.

    A container that leaves the registry (closed or garbage collected) takes its counters with
    it; the aggregator folds its last seen counters into a retired total for its name so the
    exported sums stay monotonic. Thread-safe.
    """

    def __init__(self, registry: ContainerRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._last: dict[int, _Seen] = {}  # bounded: rebuilt every collect, one entry per live container
        self._retired: dict[_Key, tuple[int, int, int]] = {}  # bounded: one per container name/kind (fixed in code)

    def collect(self) -> list[ContainerGroup]:
        """Aggregate the live containers now, sorted by name then kind."""
        with self._lock:
            return self._collect()

    def _collect(self) -> list[ContainerGroup]:
        current: dict[int, _Seen] = {}
        acc: dict[_Key, list[Any]] = {}
        for container in self._registry:
            st = container.stats()
            key = (st.name, st.kind)
            counters = (st.evictions, st.expirations, st.rejections)
            try:
                ref: Callable[[], Any] = weakref.ref(container)
            except TypeError:  # not weak-referenceable: track by id only
                ref = _StrongRef(container)
            current[id(container)] = (ref, key, counters)
            a = acc.get(key)
            if a is None:
                a = acc[key] = [0, 0, 0, 0, 0.0, 0, 0, 0, None, None]
            a[0] += 1
            a[1] += st.size
            a[2] += st.capacity
            a[3] = max(a[3], st.peak)
            a[4] = max(a[4], st.fill)
            if st.bytes is not None:
                a[8] = (a[8] or 0) + st.bytes
            if st.capacity_bytes is not None:
                a[9] = (a[9] or 0) + st.capacity_bytes
            a[5] += counters[0]
            a[6] += counters[1]
            a[7] += counters[2]
        for ident, (ref, key, counters) in self._last.items():
            now_entry = current.get(ident)
            if now_entry is not None and now_entry[0]() is ref() and ref() is not None:
                continue
            old = self._retired.get(key, (0, 0, 0))
            self._retired[key] = (old[0] + counters[0], old[1] + counters[1], old[2] + counters[2])
        self._last = current
        groups: list[ContainerGroup] = []
        # A name with no live instance exports no series; its retired totals are kept for when
        # an instance comes back, so the counters resume where they were.
        for key in sorted(acc):
            a = acc[key]
            r = self._retired.get(key, (0, 0, 0))
            groups.append(
                ContainerGroup(
                    name=key[0],
                    kind=key[1],
                    instances=a[0],
                    size=a[1],
                    capacity=a[2],
                    peak=a[3],
                    fill=a[4],
                    evictions=a[5] + r[0],
                    expirations=a[6] + r[1],
                    rejections=a[7] + r[2],
                    bytes=a[8],
                    capacity_bytes=a[9],
                )
            )
        return groups


class _StrongRef:
    """A stand-in for ``weakref.ref`` for objects that do not support weak references."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __call__(self) -> Any:
        return self._obj
