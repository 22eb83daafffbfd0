"""#13 (relay): a node's use of relays: when to be reachable through them, which ones, failover.

Theory of operation
-------------------
One :class:`RelayAgent` per node (QUIC transport only). It configures the transport's relay
service (``relay.serve``) and, while the node *needs* relays, keeps reservations at up to
``relay.relays_wanted`` of them:

* need: ``relay.mode`` ``always``; ``never``; ``auto``: peers report seeing this node at
  addresses none of which is one of its own (:func:`quicmesh.core.relay.behind_nat`);
* candidates, in order: ``relay.via`` (``--relay-via``), then peers whose verified signed
  self-record announces that they relay (an address ``relay:<id>@HOST:PORT`` without target);
  a candidate that failed is not retried for ``_BACKOFF`` seconds;
* while it holds reservations the node announces (in its signed self-record, and the
  addresses of its service adverts) its relayed addresses ``relay:<R>@<HOST:PORT>/<self>``
  *only*: its own addresses cannot be dialed from outside;
* a relay whose connection closes is dropped from the announced set *at once* (a new signed
  record is made), and the loop reserves at another candidate right away; the figures
  (``failovers``, ``last_failover_seconds``: from the loss to the replacement's reservation)
  are in ``/health`` and ``/metrics``.

A relay (``relay.serve``) announces ``relay:<self>@<its first address>`` besides its addresses,
so that nodes find it without configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..bounded import LruMap, Overflow
from ..config.relay import RelayConfig
from ..core.relay import RelayAddress, behind_nat, is_relay_address
from ..core.selfrecord import verify_record
from ..errors import QuicmeshError
from ..identity import NodeId
from .addressing import announce, set_address_filter
from .driver import NodeDriver
from .quic_transport import QuicTransport

__all__ = ["RelayAgent"]

log = logging.getLogger("quicmesh.relay")

_BACKOFF = 5.0
"""Seconds a relay candidate that failed is left alone."""
_SCAN = 256
"""Address-book entries looked at for relays announced in signed records (per attempt)."""
_MAX_ADDRESSES = 8


class RelayAgent:
    """Keeps the node reachable through relays when it needs them (see the module docstring)."""

    def __init__(self, node: NodeDriver, config: RelayConfig) -> None:
        self.node = node
        self.config = config
        t = node.transport
        self.quic: QuicTransport | None = t if isinstance(t, QuicTransport) else None
        if self.quic is not None:
            self.quic.configure_relay(config)
            self.quic.relay.on_relay_lost.append(self._lost)
        self.active: LruMap[NodeId, str] = LruMap("relay.active", max(1, config.relays_wanted), Overflow.REJECT)
        """Relays holding this node's reservation -> their ``HOST:PORT``."""
        self._failed: LruMap[str, float] = LruMap("relay.failed_candidates", 64)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost_at: float | None = None
        self.failovers = 0
        """Relays replaced after their connection closed."""
        self.last_failover_seconds = 0.0
        """Seconds from the last relay loss to the replacement's reservation."""
        self.reservation_failures = 0
        """Reservation attempts that failed (relay unreachable or refusing)."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Hook the announced addresses and start keeping reservations."""
        if self.quic is None:
            return
        set_address_filter(self.node.core, self._filter)
        self._announce()
        if self.config.mode != "never":
            self._task = asyncio.ensure_future(self._keep())

    async def stop(self) -> None:
        """Stop keeping reservations."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.active.close()
        self._failed.close()

    # -- state --------------------------------------------------------------------------------

    def needed(self) -> bool:
        """Whether this node should be reachable through relays now."""
        mode = self.config.mode
        if mode != "auto":
            return mode == "always"
        obs = self.node.mesh.observed
        own = [obs.listen, *obs.interfaces, *self.config_addresses()]
        return behind_nat(own, obs.votes().keys())

    def config_addresses(self) -> tuple[str, ...]:
        """The node's configured advertise addresses (its own, for :meth:`needed`)."""
        return self.node.config.addresses.advertise_addresses

    def relayed_addresses(self) -> list[str]:
        """The relayed addresses announced now."""
        me = self.node.id
        return [str(RelayAddress(r, host, me)) for r, host in self.active.items()]

    def health(self) -> dict[str, Any]:
        """For ``/health``: serving, mode, relays in use and the relay's counters."""
        q = self.quic
        return {"serve": self.config.serve, "mode": self.config.mode, "needed": self.needed(),
                "relays": [str(r) for r in self.active.keys()], "announced": self.relayed_addresses(),
                "failovers": self.failovers, "last_failover_seconds": round(self.last_failover_seconds, 3),
                **(q.relay.stats() if q is not None else {})}

    def gauges(self) -> dict[str, float]:
        """``relay_*`` numbers for ``/metrics``."""
        q = self.quic
        if q is None:
            return {}
        out: dict[str, float] = {}
        for k, v in q.relay.stats().items():
            gauge = k in ("peers", "peers_capacity", "reservations", "sessions", "paths", "reservations_held")
            if k.startswith("dropped:"):
                out[f"relay_dropped_total:{k[8:]}"] = float(v)
            else:
                out[f"relay_{k}" + ("" if gauge else "_total")] = float(v)
        out["relay_relays_in_use"] = float(len(self.active))
        out["relay_failovers_total"] = float(self.failovers)
        out["relay_last_failover_seconds"] = self.last_failover_seconds
        return out

    # -- internals ----------------------------------------------------------------------------

    def _filter(self, base: tuple[str, ...]) -> tuple[str, ...]:
        """What the node announces, given what it would announce without relays."""
        extra: list[str] = []  # bounded: at most _MAX_ADDRESSES kept
        if self.config.serve and base and not is_relay_address(base[0]):
            extra.append(str(RelayAddress(self.node.id, base[0])))
        relayed = self.relayed_addresses() if self.needed() else []
        if relayed:
            return tuple([*relayed, *extra][:_MAX_ADDRESSES])
        return tuple([*base, *extra][:_MAX_ADDRESSES])

    def _announce(self) -> None:
        node = self.node
        announce(node.core, node.keypair, node.trust.wire_id, node.mesh.observed.announced())

    def _lost(self, relay: NodeId) -> None:
        host = self.active.pop(relay)
        if host is None:
            return
        self._lost_at = asyncio.get_running_loop().time()
        self._failed.set(host, self._lost_at)  # not retried before _BACKOFF: it just died
        log.info("relay %s lost; looking for another", relay.short())
        self._announce()  # at once: peers must not dial through a dead relay
        self._wake.set()

    def _candidates(self) -> list[tuple[str, NodeId | None]]:
        out: list[tuple[str, NodeId | None]] = [(a, None) for a in self.config.via]  # bounded: via + _SCAN
        book = self.node.mesh.book
        realm = self.node.trust.wire_id
        for peer in book.peers()[:_SCAN]:
            rec = book.record(peer)
            if rec is None:
                continue
            for a in rec.addrs:
                if not is_relay_address(a):
                    continue
                try:
                    ra = RelayAddress.parse(a)
                except ValueError:
                    continue
                if ra.target is None and ra.relay == peer and verify_record(rec, realm, peer) is not None:
                    out.append((ra.host, ra.relay))
        return out

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.needed() and len(self.active) < self.config.relays_wanted:
                await self._reserve_more(loop.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.retry_interval)

    async def _reserve_more(self, now: float) -> None:
        """Reserve at candidates until ``relays_wanted`` hold a reservation: the missing number
        of candidates are tried *at once* (a dead candidate costs a handshake timeout, which
        must not delay the others), then the next ones."""
        me = self.node.id
        tried: set[str] = set()  # bounded: the candidates of this round
        while len(self.active) < self.config.relays_wanted:
            batch: list[tuple[str, NodeId | None]] = []  # bounded: relays_wanted
            for host, rid in self._candidates():
                if len(batch) >= self.config.relays_wanted - len(self.active):
                    break
                if host in tried or rid == me or (rid is not None and rid in self.active):
                    continue
                failed = self._failed.peek(host)
                if (failed is not None and now - failed < _BACKOFF) or host in self.active.values() \
                        or host == self.node.address:
                    continue
                tried.add(host)
                batch.append((host, rid))
            if not batch:
                return
            await asyncio.gather(*(self._reserve_at(host, rid, now) for host, rid in batch))

    async def _reserve_at(self, host: str, rid: NodeId | None, now: float) -> None:
        assert self.quic is not None
        try:
            conn = await self.quic.relay.reserve(host, rid)
        except (QuicmeshError, OSError) as exc:
            self.reservation_failures += 1
            self._failed.set(host, now)
            log.debug("relay %s: %s", host, exc)
            return
        me = self.node.id
        if conn.peer_id == me or conn.peer_id in self.active or len(self.active) >= self.config.relays_wanted:
            return
        self.active.set(conn.peer_id, host)
        if self._lost_at is not None:
            self.failovers += 1
            self.last_failover_seconds = asyncio.get_running_loop().time() - self._lost_at
            self._lost_at = None
        log.info("reachable through relay %s at %s", conn.peer_id.short(), host)
        self._announce()
