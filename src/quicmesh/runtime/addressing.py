"""#13: what a node announces as its addresses: the interface addresses of a wildcard listener
(see :mod:`quicmesh.core.observed`) and the signed self-record of the announced set
(:mod:`quicmesh.core.selfrecord`)."""

from __future__ import annotations

import ipaddress
import socket
import time
import weakref
from collections.abc import Callable

from ..core.node import NodeCore
from ..core.observed import canonical_address, is_wildcard
from ..core.selfrecord import sign_record
from ..identity import KeyPair

__all__ = ["announce", "interface_addresses", "set_address_filter"]

_FILTERS: weakref.WeakKeyDictionary[NodeCore, Callable[[tuple[str, ...]], tuple[str, ...]]] = (
    weakref.WeakKeyDictionary())  # bounded: one per live node


def set_address_filter(core: NodeCore, fn: Callable[[tuple[str, ...]], tuple[str, ...]]) -> None:
    """#13 (relay): make :func:`announce` pass the node's addresses through ``fn`` first (the
    relay agent puts relayed addresses in)."""
    _FILTERS[core] = fn

_MAX_INTERFACE_ADDRESSES = 16
"""Interface addresses considered (a host with more announces the first ones)."""


def interface_addresses(listen: str) -> tuple[str, ...]:
    """``HOST:PORT`` for each interface address a wildcard ``listen`` address is reachable at
    (IPv4 for ``0.0.0.0``, IPv6 and IPv4 for ``::``; link-local ones left out); empty for a
    specific listen address or when the interfaces cannot be read."""
    if not is_wildcard(listen):
        return ()
    host, _, port = listen.rpartition(":")
    v6 = ":" in host
    families = (socket.AF_INET6, socket.AF_INET) if v6 else (socket.AF_INET,)
    try:
        import psutil

        nics = psutil.net_if_addrs()
    except Exception:  # no psutil or no permission: announce observed addresses only
        return ()
    out: list[str] = []  # bounded: _MAX_INTERFACE_ADDRESSES
    for family in families:
        for addrs in nics.values():
            for a in addrs:
                if a.family != family:
                    continue
                try:
                    ip = ipaddress.ip_address(a.address.split("%", 1)[0])
                except ValueError:
                    continue
                if ip.is_link_local:
                    continue
                canon = canonical_address(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
                if canon is not None and canon not in out and len(out) < _MAX_INTERFACE_ADDRESSES:
                    out.append(canon)
    return tuple(out)


def announce(core: NodeCore, keypair: KeyPair, realm: str, addresses: tuple[str, ...]) -> None:
    """Make ``addresses`` what the node announces, with a fresh signed self-record of them
    (``at``: the wall clock in milliseconds, strictly increasing)."""
    direct = addresses
    fn = _FILTERS.get(core)
    if fn is not None:
        addresses = fn(addresses)
    core.set_addresses(addresses)
    old = core.mesh.book.own_record
    at = max(int(time.time() * 1000), old.at + 1 if old is not None else 0)
    core.mesh.set_self_record(sign_record(keypair, realm, core.mesh.addresses, at), realm)
    # a node announcing relayed addresses still punches with its direct ones (#13)
    core.mesh.book.direct_record = (
        sign_record(keypair, realm, direct, at) if direct and direct != core.mesh.addresses else None)
