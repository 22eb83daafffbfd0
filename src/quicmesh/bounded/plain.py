"""``BoundedDict`` and ``BoundedSet``: a ``dict`` and a ``set`` with a cap, statistics and a place
in the registry.

They are for the many small maps and sets that grow with remote input (connections being
dialled, routes, providers, sessions...) and need no eviction order or expiry: the owner removes
entries itself, and the container guarantees that it never holds more than ``capacity`` keys and
that ``/metrics`` sees it (``kind`` ``"dict"`` / ``"set"``: size, capacity, peak, rejections).

They subclass the built-ins, so lookups, ``in``, ``len``, iteration, ``get``, ``pop``, ``del``,
``discard`` and comparisons run at C speed and the containers can be passed wherever a ``dict`` or
``set`` is expected. Every operation that can add a key checks the cap:

* a new key beyond ``capacity`` raises :class:`~quicmesh.errors.ContainerFull` (counted as a
  rejection); replacing the value of a present key always succeeds,
* ``update`` / ``|=`` / ``setdefault`` / ``symmetric_difference_update`` / ``^=`` are all-or-nothing:
  when the result would exceed ``capacity``, nothing is added,
* operations that build a new container (``copy()``, ``copy.copy``, pickling, ``d | other``,
  ``s | other``, ``s & other``...) return a plain ``dict`` / ``set``, unbounded and unregistered,
* ``fromkeys`` is refused (a bounded container needs a name and a capacity).

``close()`` empties the container and leaves the registry.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, NoReturn, TypeVar

from ._base import ContainerRegistry, Tracked

__all__ = ["BoundedDict", "BoundedSet"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T", bound=Hashable)

_dict_setitem = dict.__setitem__
_dict_delitem = dict.__delitem__
_set_add = set.add
_set_discard = set.discard


class BoundedDict(dict[K, V], Tracked):
    """A ``dict`` holding at most ``capacity`` keys; see the module docstring.

    >>> d: BoundedDict[str, int] = BoundedDict("example.routes", 2)
    >>> d["a"] = 1; d["b"] = 2; d["a"] = 3     # replacing a value is always allowed
    >>> d["c"] = 4
    Traceback (most recent call last):
    ...
    quicmesh.errors.ContainerFull: ...
    """

    kind = "dict"

    def __init__(self, name: str, capacity: int, *, registry: ContainerRegistry | None = None) -> None:
        dict.__init__(self)
        Tracked.__init__(self, name, capacity, registry=registry)

    # -- Tracked ------------------------------------------------------------------------------------

    def _size(self) -> int:
        return len(self)

    def _clear(self) -> None:
        dict.clear(self)

    # -- every way of adding a key --------------------------------------------------------------------

    def __setitem__(self, key: K, value: V) -> None:
        _dict_setitem(self, key, value)
        if len(self) > self._peak:  # a new key, and more than ever before: check the cap
            self._grew(key)

    def _grew(self, key: K) -> None:
        n = len(self)
        if n > self._capacity:
            _dict_delitem(self, key)
            self.reject()
        self._peak = n

    def setdefault(self, key: K, default: Any = None) -> Any:
        """``d[key]`` when present, else insert ``default`` (if there is room) and return it."""
        if key in self:
            return self[key]
        self[key] = default
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        """As ``dict.update``, all or nothing: raises ``ContainerFull`` (adding nothing) when the
        new keys do not all fit."""
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        other: dict[Any, Any] = dict(*args, **kwargs)  # bounded: the caller's input, transient
        fresh = sum(1 for k in other if k not in self)
        if len(self) + fresh > self._capacity:
            self.reject()
        dict.update(self, other)
        if len(self) > self._peak:
            self._peak = len(self)

    def __ior__(self, other: Any) -> BoundedDict[K, V]:  # type: ignore[override,misc]
        self.update(other)
        return self

    @classmethod
    def fromkeys(cls, *_args: Any, **_kwargs: Any) -> NoReturn:
        """Refused: a bounded dict needs a name and a capacity. Use ``d.update(dict.fromkeys(...))``."""
        raise TypeError("BoundedDict.fromkeys is not supported; use d.update(dict.fromkeys(...))")

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))  # copies and pickles are plain dicts

    def __repr__(self) -> str:
        return f"BoundedDict({self._name!r}, {self._capacity}, {dict.__repr__(self)})"


class BoundedSet(set[T], Tracked):
    """A ``set`` holding at most ``capacity`` members; see the module docstring."""

    kind = "set"

    def __init__(self, name: str, capacity: int, *, registry: ContainerRegistry | None = None) -> None:
        set.__init__(self)
        Tracked.__init__(self, name, capacity, registry=registry)

    # -- Tracked ------------------------------------------------------------------------------------

    def _size(self) -> int:
        return len(self)

    def _clear(self) -> None:
        set.clear(self)

    # -- every way of adding a member -------------------------------------------------------------

    def add(self, item: T) -> None:
        """Add ``item``; ``ContainerFull`` when it is new and the set is full."""
        _set_add(self, item)
        if len(self) > self._peak:  # a new member, and more than ever before: check the cap
            self._grew(item)

    def _grew(self, item: T) -> None:
        n = len(self)
        if n > self._capacity:
            _set_discard(self, item)
            self.reject()
        self._peak = n

    def update(self, *others: Iterable[T]) -> None:
        """As ``set.update``, all or nothing: raises ``ContainerFull`` (adding nothing) when the
        new members do not all fit."""
        fresh: set[T] = set().union(*others)  # bounded: the caller's input, transient
        fresh -= self
        if len(self) + len(fresh) > self._capacity:
            self.reject()
        set.update(self, fresh)
        if len(self) > self._peak:
            self._peak = len(self)

    def __ior__(self, other: Any) -> BoundedSet[T]:  # type: ignore[override,misc]
        if not isinstance(other, (set, frozenset)):
            return NotImplemented
        self.update(other)
        return self

    def symmetric_difference_update(self, other: Iterable[T]) -> None:
        """As ``set.symmetric_difference_update``, all or nothing (``ContainerFull``)."""
        items: set[T] = set(other)  # bounded: the caller's input, transient
        after = len(self) + len(items - self) - len(items & self)
        if after > self._capacity:
            self.reject()
        set.symmetric_difference_update(self, items)
        if len(self) > self._peak:
            self._peak = len(self)

    def __ixor__(self, other: Any) -> BoundedSet[T]:  # type: ignore[override,misc]
        if not isinstance(other, (set, frozenset)):
            return NotImplemented
        self.symmetric_difference_update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (set, (set(self),))  # copies and pickles are plain sets

    def __repr__(self) -> str:
        members = ", ".join(map(repr, self))
        return f"BoundedSet({self._name!r}, {self._capacity}, {{{members}}})" if self else \
            f"BoundedSet({self._name!r}, {self._capacity}, set())"
