"""Local discovery: nodes of one realm on one LAN find each other without a bootstrap list, with
mDNS/DNS-SD (the ``zeroconf`` library).

Theory of operation
-------------------
**Announcing.** At start a node registers one DNS-SD service instance of type
:data:`SERVICE_TYPE`, named by its node id, on the interfaces of its listen address only (a node
on ``0.0.0.0`` uses every non-loopback IPv4 interface; a node on loopback stays quiet unless
``discovery.loopback``). Its TXT record carries the format version, the realm's **wire id**
(:attr:`~quicmesh.core.trust.Realm.wire_id`: the name of an open realm, a hash of name and
authority key in authority mode, so an authority realm's name is never sent), the node id and
the listen addresses. The instance is announced again every ``discovery.interval`` seconds (at
most), answered to queries by zeroconf (rate-limited per RFC 6762), and withdrawn (goodbye) at
stop.

**Listening.** A service browser reports instances appearing, changing and leaving. At most
``discovery.max_announcements`` reports are handled per interval (the rest are counted as
``ignored_rate``), each at most one TXT look-up. :class:`DiscoveryTable` then decides: a
malformed record, another realm's wire id or this node's own id is ignored (counted by reason);
anything else is remembered in a bounded TTL map of discovered peers (``discovery.max_peers``,
``discovery.peer_ttl``; a goodbye forgets at once).

**Dialling.** While the node has no realm neighbour (alone: just started without a bootstrap
list, or every neighbour gone), it joins the realm overlay through up to
``discovery.join_contacts`` discovered peers (freshest first) plus its bootstrap list, at most
once per :data:`JOIN_GAP` seconds: the core's join (:meth:`~quicmesh.core.node.NodeCore.join`),
whose dials pass the core's dial gate as learned ones (queued, rate-limited: anyone on the LAN can
announce) and whose retries back off while the node stays alone. A
node that already has neighbours only adds discovered peers to its address book and passive view
(``Mesh.add_peer``, not a dial), from which the overlay takes replacements when a neighbour
fails. Membership is decided by the QUIC handshake's admission, never by an announcement: a
forged one costs at most one refused dial.

Everything here runs on the node's event loop; nothing of it is in ``core/`` (sans-IO).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..bounded import ContainerRegistry, TtlMap
from ..config import DiscoveryConfig
from ..identity import NodeId
from .driver import NodeDriver
from .memory import MemoryTransport

__all__ = [
    "JOIN_GAP",
    "SERVICE_TYPE",
    "Announcement",
    "DiscoveryTable",
    "LocalDiscovery",
    "announcement_properties",
    "parse_announcement",
    "plan_interfaces",
]

log = logging.getLogger("quicmesh.discovery")

SERVICE_TYPE = "_quicmesh._udp.local."
"""The DNS-SD service type every quicmesh node announces (RFC 6763)."""
FORMAT = "1"
"""Value of the ``v`` TXT key; announcements of another format are ignored as malformed."""
JOIN_GAP = 1.0
"""Seconds between two joins through discovered peers while the node is alone."""
GATHER = 0.2
"""Seconds a lone node waits after its first discovery before joining, to gather the answers of
the other nodes to its first query (so it joins through several at once)."""
MAX_ADDRESSES = 4
"""Listen addresses announced and accepted per node (count)."""
MAX_ADDRESS_LEN = 64
"""Characters of one announced ``HOST:PORT``."""
LOOKUP_TIMEOUT_MS = 1000
"""Milliseconds one TXT/SRV look-up of an announced instance may take."""

_COUNTERS = ("seen", "accepted", "ignored_other_realm", "ignored_self", "ignored_malformed",
             "ignored_rate", "removed", "dialled", "joins", "announced", "errors")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One node's announcement as read from its TXT record."""

    node_id: NodeId
    realm: str
    """The realm's wire id."""
    addresses: tuple[str, ...]


def announcement_properties(node_id: NodeId, wire_id: str, addresses: tuple[str, ...]) -> dict[str, str]:
    """The TXT record of this node's announcement."""
    return {"v": FORMAT, "r": wire_id, "id": str(node_id), "a": ",".join(addresses[:MAX_ADDRESSES])}


def parse_announcement(props: Mapping[bytes, bytes | None]) -> Announcement | None:
    """Read an announcement's TXT record; ``None`` when it is malformed (never raises)."""
    try:
        def get(key: bytes) -> str:
            value = props.get(key)
            if value is None:
                raise ValueError(key)
            return value.decode("utf-8")

        if get(b"v") != FORMAT:
            return None
        node_id = NodeId.parse(get(b"id"))
        realm = get(b"r")
        addrs = tuple(a for a in get(b"a").split(",") if a)
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    if not realm or not addrs or len(addrs) > MAX_ADDRESSES:
        return None
    for a in addrs:
        host, sep, port = a.rpartition(":")
        if len(a) > MAX_ADDRESS_LEN or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return None
    return Announcement(node_id, realm, addrs)


def plan_interfaces(address: str, *, loopback: bool,
                    local_ips: tuple[str, ...] | None = None) -> tuple[list[str], tuple[str, ...]] | str:
    """Where to announce for a node listening at ``address``: ``(interface IPs, announced
    addresses)``, or why not (a one-line reason). ``local_ips``: this host's IPv4 addresses
    (default: read from the system) for a node listening on ``0.0.0.0``."""
    host, _, port = address.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"listen host {host!r} is not an IP address"
    if ip.version != 4:
        return "only IPv4 listen addresses are announced"
    if ip.is_unspecified:
        ips = local_ips if local_ips is not None else _local_ipv4()
        usable = [a for a in ips if not ipaddress.ip_address(a).is_loopback]
        if not usable and loopback:
            usable = [a for a in ips if ipaddress.ip_address(a).is_loopback]
        if not usable:
            return "no non-loopback IPv4 interface"
        return usable, tuple(f"{a}:{port}" for a in usable[:MAX_ADDRESSES])
    if ip.is_loopback and not loopback:
        return "listening on loopback only (discovery.loopback is off)"
    return [host], (address,)


def _local_ipv4() -> tuple[str, ...]:
    import ifaddr

    return tuple(str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
                 if isinstance(ip.ip, str))


class DiscoveryTable:
    """What a node makes of the announcements it hears (no I/O; time is an argument).

    ``window`` and the counters are per node; ``peers`` is a bounded TTL map of the discovered
    peers of this node's realm, freshest last."""

    def __init__(self, me: NodeId, wire_id: str, config: DiscoveryConfig,
                 registry: ContainerRegistry | None = None) -> None:
        self.me = me
        self.wire_id = wire_id
        self.config = config
        self.peers: TtlMap[NodeId, tuple[str, ...]] = TtlMap(
            "discovery.local_peers", config.max_peers, config.peer_ttl, registry=registry)
        self.tried: TtlMap[NodeId, None] = TtlMap(
            "discovery.local_tried", config.max_peers, config.peer_ttl, registry=registry)
        """Peers a join went through: not joined through again until they announce again."""
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)  # bounded: fixed keys
        self._window_start = float("-inf")
        self._window_count = 0

    def admit(self, now: float) -> bool:
        """Whether one more announcement may be handled now (``max_announcements`` per
        ``interval``); counts the refusal."""
        if now - self._window_start >= self.config.interval:
            self._window_start, self._window_count = now, 0
        if self._window_count >= self.config.max_announcements:
            self.counters["ignored_rate"] += 1
            return False
        self._window_count += 1
        return True

    def offer(self, ann: Announcement | None, now: float) -> bool:
        """Handle one announcement; whether it named a peer of this realm (now remembered)."""
        self.counters["seen"] += 1
        if ann is None:
            self.counters["ignored_malformed"] += 1
            return False
        if ann.realm != self.wire_id:
            self.counters["ignored_other_realm"] += 1
            return False
        if ann.node_id == self.me:
            self.counters["ignored_self"] += 1
            return False
        self.counters["accepted"] += 1
        self.tried.pop(ann.node_id)  # announced again: worth one more dial
        self.peers.pop(ann.node_id)  # re-inserted: freshest last
        self.peers.set(ann.node_id, ann.addresses, now)
        return True

    def remove(self, node_id: NodeId) -> None:
        """The peer withdrew its announcement (goodbye, or its record expired)."""
        if self.peers.pop(node_id) is not None:
            self.counters["removed"] += 1

    def contacts(self, now: float, exclude: set[NodeId]) -> list[tuple[NodeId, tuple[str, ...]]]:
        """Up to ``join_contacts`` discovered peers to join through, freshest first, none a join
        went through since it last announced (so one announcement costs at most one dial from
        here; marked tried by this call)."""
        self.peers.expire(now)
        self.tried.expire(now)
        out = [(p, a) for p, a in reversed(list(self.peers.items())) if p not in exclude and p not in self.tried]
        out = out[: self.config.join_contacts]
        for p, _ in out:
            self.tried.set(p, None, now)
        return out


class LocalDiscovery:
    """Announces a :class:`~quicmesh.runtime.node.Node` on its LAN and joins through the nodes of
    its realm it finds there (see the module docstring). ``start``/``stop`` are called by the
    node."""

    def __init__(self, node: NodeDriver, config: DiscoveryConfig) -> None:
        self.node = node
        self.config = config
        self.table = DiscoveryTable(node.id, node.trust.realm.wire_id, config, node.registry)
        self.state = "off" if not config.local else "not started"
        """``on``, or why discovery does not run (``off``: switched off)."""
        self.interfaces: list[str] = []  # bounded: this host's interfaces
        self.addresses: tuple[str, ...] = ()
        self._azc: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lookups: set[asyncio.Task[None]] = set()  # bounded: at most max_announcements per interval
        self._wake = asyncio.Event()
        self._next_join = 0.0

    async def start(self) -> None:
        """Register this node's announcement and start browsing (no-op when off)."""
        if not self.config.local:
            return
        if isinstance(self.node.transport, MemoryTransport):
            self.state = "in-memory transport"
            return
        try:
            plan = plan_interfaces(self.node.address, loopback=self.config.loopback)
        except Exception as exc:  # interfaces unreadable (e.g. no netlink under a systemd sandbox)
            plan = f"cannot read the network interfaces: {type(exc).__name__}: {exc}"[:200]
        if isinstance(plan, str):
            self.state = plan
            log.info("local discovery off: %s", plan)
            return
        self.interfaces, self.addresses = plan
        try:
            await self._start_zeroconf()
        except Exception as exc:  # no multicast here (no route, no permission): run without it
            self.state = f"cannot start mDNS: {type(exc).__name__}: {exc}"[:200]
            self.table.counters["errors"] += 1
            log.warning("local discovery off: %s", self.state)
            await self._close_zeroconf()
            return
        self.state = "on"
        self._task = asyncio.ensure_future(self._run())

    async def _start_zeroconf(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        me = str(self.node.id)
        self._azc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        port = self.addresses[0].rpartition(":")[2]
        self._info = AsyncServiceInfo(
            SERVICE_TYPE, f"{me}.{SERVICE_TYPE}", port=int(port), server=f"qm-{me[:20]}.local.",
            addresses=[socket.inet_aton(a.rpartition(":")[0]) for a in self.addresses],
            properties=announcement_properties(self.node.id, self.table.wire_id, self.addresses),
        )
        # instance names are node ids (unique): no probing for conflicts, so peers hear us at once
        await self._azc.async_register_service(self._info, cooperating_responders=True)
        self.table.counters["announced"] += 1
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])

    async def stop(self) -> None:
        """Withdraw the announcement (goodbye) and stop browsing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for t in list(self._lookups):
            t.cancel()
        self._lookups.clear()
        await self._close_zeroconf()
        if self.state == "on":
            self.state = "stopped"

    async def _close_zeroconf(self) -> None:
        azc, self._azc = self._azc, None
        browser, self._browser = self._browser, None
        with contextlib.suppress(Exception):
            if browser is not None:
                await browser.async_cancel()
        if azc is not None:  # closing sends the goodbye of our instance (peers forget us at once)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(azc.async_close(), 2.0)

    # -- listening --------------------------------------------------------------------------------

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        """The browser's callback (on the event loop): an instance appeared, changed or left."""
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            instance = name[: -len(SERVICE_TYPE) - 1] if name.endswith("." + SERVICE_TYPE) else ""
            with contextlib.suppress(ValueError):
                self.table.remove(NodeId.parse(instance))
            return
        if not self.table.admit(self.node._now()):
            return
        task = asyncio.ensure_future(self._lookup(name))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _lookup(self, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        azc = self._azc
        if azc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not info.load_from_cache(azc.zeroconf):
                await info.async_request(azc.zeroconf, LOOKUP_TIMEOUT_MS)
        except Exception:
            self.table.counters["errors"] += 1
            return
        ann = parse_announcement(info.properties or {})
        now = self.node._now()
        if not self.table.offer(ann, now) or ann is None:
            return
        mesh = self.node.mesh
        if len(mesh.realm.active):
            mesh.add_peer(ann.node_id, ann.addresses, now)  # address book and passive view
        else:
            self._next_join = max(self._next_join, now + GATHER)
            self._wake.set()

    # -- the loop: re-announcing and joining while alone --------------------------------------------

    async def _run(self) -> None:
        next_announce = self.node._now() + self.config.interval
        while True:
            now = self.node._now()
            alone = not len(self.node.mesh.realm.active)
            if alone and now >= self._next_join and len(self.table.peers):
                try:
                    self._join(now)
                except Exception:  # never let one bad join end discovery
                    self.table.counters["errors"] += 1
                    log.exception("local discovery: join failed")
            if now >= next_announce:
                next_announce = now + self.config.interval
                self._refresh(now)
                try:
                    await self._azc.async_update_service(self._info)
                    self.table.counters["announced"] += 1
                except Exception:
                    self.table.counters["errors"] += 1
            wake_at = next_announce
            if alone and len(self.table.peers):
                wake_at = min(wake_at, max(self._next_join, now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wake_at - self.node._now(), 0.01))

    def _refresh(self, now: float) -> None:
        """Keep the discovered peers whose records zeroconf still holds (they keep announcing;
        an unchanged announcement raises no browser event); the others expire after
        ``peer_ttl``."""
        from zeroconf.asyncio import AsyncServiceInfo

        for pid in list(self.table.peers):
            info = AsyncServiceInfo(SERVICE_TYPE, f"{pid}.{SERVICE_TYPE}")
            with contextlib.suppress(Exception):
                if info.load_from_cache(self._azc.zeroconf):
                    self.table.peers.touch(pid, now)
        self.table.peers.expire(now)

    def _join(self, now: float) -> None:
        node = self.node
        contacts = self.table.contacts(now, {c.peer_id for c in node.transport.connections()})
        self._next_join = now + JOIN_GAP
        if not contacts or node._stopped:
            return
        self.table.counters["joins"] += 1
        self.table.counters["dialled"] += len(contacts)
        for pid, addrs in contacts:
            node.mesh.add_peer(pid, addrs, now)
        boot: list[tuple[NodeId | None, tuple[str, ...]]] = [(None, (a,)) for a in node.config.bootstrap]
        node._run(node.core.join([*boot, *contacts], now, follow_services=False, learned=True))
        node._rearm()

    # -- observability ----------------------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        """Numbers for ``/metrics`` (``local_discovery_*``)."""
        c = self.table.counters
        out = {f"local_discovery_{k}_total": float(v) for k, v in c.items()}
        out["local_discovery_peers"] = float(len(self.table.peers))
        out["local_discovery_on"] = 1.0 if self.state == "on" else 0.0
        out["local_discovery_mdns_cache_names"] = float(self.mdns_cache_names())
        return out

    def mdns_cache_names(self) -> int:
        """Names in zeroconf's record cache (its own, expired by record TTL), so ``/metrics``
        shows what the LAN's mDNS traffic makes it hold."""
        azc = self._azc
        with contextlib.suppress(Exception):
            return len(azc.zeroconf.cache.cache) if azc is not None else 0
        return 0

    def health(self) -> dict[str, Any]:
        """The ``/health`` ``local_discovery`` section."""
        return {
            "state": self.state,
            "mdns_cache_names": self.mdns_cache_names(),
            "interfaces": list(self.interfaces),
            "announced_addresses": list(self.addresses),
            "peers": len(self.table.peers),
            "capacity": self.config.max_peers,
            **dict(self.table.counters),
        }
