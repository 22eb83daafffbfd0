"""Observed addresses: what peers report seeing this node from, and what the node announces.

Theory of operation
-------------------
Every connection's handshake carries, each way, the address one end sees the other at
(``Hello.obs``: the address the dialer dialed; ``Challenge.obs``: the source address the
listener received the dialer from, i.e. the dialer's NAT mapping; see
:mod:`quicmesh.core.handshake`). Once the connection is established the runtime feeds the peer's
report to :meth:`ObservedAddresses.report`.

**One peer, one vote.** The table keeps each reporting peer's *latest* report only (a
:class:`~quicmesh.bounded.TtlMap` peer -> address, ``observed_reporters`` entries, a report
counts for ``observed_ttl`` seconds). An address is *confirmed* once at least
``observed_confirmations`` (default 2) distinct peers report it. The threshold holds even when
the node has a single peer: that peer's report is shown in ``/health`` but never announced, so
one hostile peer cannot make a node announce an address of its choosing (a node with one peer
announces its listen, interface or ``--advertise-address`` addresses). In an open realm, where
anyone may mint node ids, several hostile identities could still agree on a lie; in an
authority realm each identity is an admitted member. A report that is not an IP literal with a
port, or names an unspecified (wildcard) or multicast address, is ignored (and counted).

**What the node announces** (:meth:`ObservedAddresses.announced`), in order, at most
:data:`~quicmesh.core.addressbook.MAX_ADDRESSES`: the configured ``advertise_addresses`` alone
when set; otherwise the listen address unless it is a wildcard (then the interface addresses
the runtime found, loopback ones only when there is nothing else), followed by the confirmed
observed addresses. The wildcard itself is never announced.

Pure state: no I/O, time is an argument.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ..bounded import ContainerRegistry, TtlMap
from ..config import AddressesConfig
from ..identity import NodeId
from .addressbook import MAX_ADDRESSES

__all__ = ["ObservedAddresses", "Report", "canonical_address", "is_wildcard"]


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or len(port) > 5:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    n = int(port)
    return (host, n) if 0 <= n <= 65535 else None


def canonical_address(address: str) -> str | None:
    """``HOST:PORT`` for an IP literal address (``[v6]:port`` for IPv6; an IPv4-mapped IPv6
    address becomes IPv4), or ``None`` when ``address`` is not one with a usable port and host
    (not unspecified, not multicast)."""
    parts = _split(address) if isinstance(address, str) and len(address) <= 64 else None
    if parts is None or parts[1] == 0:
        return None
    try:
        ip = ipaddress.ip_address(parts[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return None
    return f"[{ip}]:{parts[1]}" if ip.version == 6 else f"{ip}:{parts[1]}"


def is_wildcard(address: str) -> bool:
    """Whether ``address`` listens on every interface (``0.0.0.0:P``, ``[::]:P``, ``:::P``)."""
    parts = _split(address)
    if parts is None:
        return False
    try:
        return ipaddress.ip_address(parts[0]).is_unspecified
    except ValueError:
        return False


def _is_loopback(address: str) -> bool:
    parts = _split(address)
    try:
        return parts is not None and ipaddress.ip_address(parts[0]).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Report:
    """One peer's latest report: the address it sees this node at, and when."""

    address: str
    at: float


class ObservedAddresses:
    """The observed-address table and the announced address set (see the module docstring)."""

    def __init__(self, config: AddressesConfig, registry: ContainerRegistry) -> None:
        self.config = config
        self._reports: TtlMap[NodeId, Report] = TtlMap(
            "observed.reports", config.observed_reporters, config.observed_ttl, registry=registry
        )
        self.received = 0
        """Reports received (every established peer connection that carried one)."""
        self.ignored = 0
        """Reports ignored: not an IP literal with a port, a wildcard or a multicast address."""
        self.listen = ""
        self.interfaces: tuple[str, ...] = ()
        self._announced: tuple[str, ...] = ()

    def configure(self, listen: str, interfaces: Iterable[str] = ()) -> tuple[str, ...]:
        """Set the bound listen address and (for a wildcard listener) the interface addresses;
        returns the announced set."""
        self.listen = listen
        self.interfaces = tuple(interfaces)
        self._announced = self._compute()
        return self._announced

    def report(self, peer: NodeId, address: str, now: float) -> bool:
        """``peer`` sees this node at ``address``; ``True`` when the announced set changed."""
        self._reports.expire(now)
        if not address:
            return False
        self.received += 1
        canon = canonical_address(address)
        if canon is None:
            self.ignored += 1
            return False
        self._reports.set(peer, Report(canon, now), now)
        return self._refresh()

    def expire(self, now: float) -> bool:
        """Drop reports older than ``observed_ttl``; ``True`` when the announced set changed."""
        self._reports.expire(now)
        return self._refresh()

    def forget(self, peer: NodeId) -> bool:
        """Drop ``peer``'s report (e.g. it misbehaved); ``True`` when the announced set changed."""
        self._reports.pop(peer)
        return self._refresh()

    def _refresh(self) -> bool:
        new = self._compute()
        changed = new != self._announced
        self._announced = new
        return changed

    def votes(self) -> dict[str, int]:
        """Observed address -> distinct peers reporting it now."""
        out: dict[str, int] = {}  # bounded: one per stored report (observed_reporters)
        for r in self._reports.values():
            out[r.address] = out.get(r.address, 0) + 1
        return out

    def confirmed(self) -> tuple[str, ...]:
        """Observed addresses reported by at least ``observed_confirmations`` distinct peers,
        most reported first."""
        need = self.config.observed_confirmations
        ranked = sorted(self.votes().items(), key=lambda kv: (-kv[1], kv[0]))
        return tuple(a for a, n in ranked if n >= need)[:MAX_ADDRESSES]

    def announced(self) -> tuple[str, ...]:
        """What this node announces as its addresses now (see the module docstring)."""
        return self._announced

    def _compute(self) -> tuple[str, ...]:
        if self.config.advertise_addresses:
            return tuple(dict.fromkeys(self.config.advertise_addresses))[:MAX_ADDRESSES]
        base: list[str] = []  # bounded: at most MAX_ADDRESSES kept below
        if self.listen and not is_wildcard(self.listen):
            base.append(self.listen)
        elif self.interfaces:
            outside = [a for a in self.interfaces if not _is_loopback(a)]
            base += outside or list(self.interfaces)
        picked = list(dict.fromkeys([*self.confirmed(), *base]))
        if self.listen and not is_wildcard(self.listen) and self.listen in picked:
            picked.remove(self.listen)
            picked.insert(0, self.listen)  # the listen address is never crowded out
        return tuple(picked[:MAX_ADDRESSES])

    def stats(self) -> dict[str, object]:
        """For ``/health`` and ``quicmesh status``."""
        need = self.config.observed_confirmations
        return {
            "announced": list(self._announced),
            "observed": [{"address": a, "reporters": n, "confirmed": n >= need}
                         for a, n in sorted(self.votes().items(), key=lambda kv: (-kv[1], kv[0]))],
            "confirmations_needed": need,
            "reports_received_total": self.received,
            "reports_ignored_total": self.ignored,
        }
