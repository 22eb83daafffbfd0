"""The address book: one current address set per peer, TTL, capacity, stale-first eviction."""

from __future__ import annotations

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import AddressBookConfig
from quicmesh.core.addressbook import MAX_ADDRESSES, AddressBook, normalize_addresses
from quicmesh.identity import KeyPair, NodeId


def nid(i: int) -> NodeId:
    return KeyPair.from_seed(i.to_bytes(32, "big")).node_id


ME = nid(0)


def book(registry: ContainerRegistry, capacity: int = 10_000, ttl: float = 3600.0) -> AddressBook:
    return AddressBook(ME, AddressBookConfig(ttl=ttl, capacity=capacity), registry)


def test_new_address_set_replaces_old_and_order_does_not_matter(registry: ContainerRegistry) -> None:
    b = book(registry)
    b.add(nid(1), ("b:2", "a:1"), 0.0)
    b.add(nid(1), ("a:1", "b:2", "a:1"), 1.0)
    assert b.addresses(nid(1)) == ("a:1", "b:2")
    assert len(b) == 1
    b.add(nid(1), ("c:3",), 2.0)
    assert b.addresses(nid(1)) == ("c:3",)
    entry = b.get(nid(1))
    assert entry is not None and entry.last_seen == 2.0


def test_empty_set_refreshes_without_erasing_and_unknown_empty_is_ignored(registry: ContainerRegistry) -> None:
    b = book(registry)
    b.add(nid(1), ("a:1",), 0.0)
    b.add(nid(1), (), 5.0)
    assert b.addresses(nid(1)) == ("a:1",)
    b.add(nid(2), (), 5.0)
    assert nid(2) not in b
    b.add(ME, ("self:1",), 0.0)
    assert ME not in b


def test_addresses_are_capped_and_sanitised() -> None:
    many = [f"h{i}:1" for i in range(50)] + ["", "x" * 1000]
    norm = normalize_addresses(many)
    assert len(norm) == MAX_ADDRESSES
    assert "" not in norm and all(len(a) < 1000 for a in norm)


def test_ttl_expires_unconnected_but_not_connected(registry: ContainerRegistry) -> None:
    b = book(registry, ttl=10.0)
    b.add(nid(1), ("a:1",), 0.0)
    b.set_connected(nid(2), ("b:1",), 0.0)
    assert b.next_deadline() == 10.0
    assert b.expire(10.0) == [nid(1)]
    assert nid(2) in b and b.next_deadline() is None
    b.set_disconnected(nid(2), 20.0)
    assert b.expire(29.0) == []
    assert b.expire(30.0) == [nid(2)]
    assert len(b) == 0


def test_capacity_evicts_stalest_unconnected_first(registry: ContainerRegistry) -> None:
    b = book(registry, capacity=3)
    b.set_connected(nid(1), ("c:1",), 0.0)  # connected, oldest
    b.add(nid(2), ("s:2",), 1.0)  # stale
    b.add(nid(3), ("f:3",), 2.0)
    b.add(nid(4), ("n:4",), 3.0)  # forces an eviction
    assert nid(1) in b and nid(2) not in b and nid(3) in b and nid(4) in b
    for i in range(5, 100):
        b.add(nid(i), (f"x:{i}",), float(i))
    assert len(b) == 3 and nid(1) in b
    assert b.stats()["peak"] == 3


def test_remove(registry: ContainerRegistry) -> None:
    b = book(registry)
    b.add(nid(1), ("a:1",), 0.0)
    assert b.remove(nid(1)) is True
    assert b.remove(nid(1)) is False
    assert b.peers() == []
