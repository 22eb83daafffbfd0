"""#13: the interface addresses a wildcard listener announces (see :mod:`quicmesh.core.observed`)."""

from __future__ import annotations

import ipaddress
import socket

from ..core.observed import canonical_address, is_wildcard

__all__ = ["interface_addresses"]

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
