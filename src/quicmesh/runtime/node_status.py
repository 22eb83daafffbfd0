"""What a node reports about itself: gauges for ``/metrics``, ``/health`` and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from .busy_poll import BusyPoll
from .driver import NodeDriver
from .quic_send import WriteThrough
from .ui_state import console_state

__all__ = ["NodeStatus"]


class NodeStatus(NodeDriver):
    """Numbers and state of a node for observability (a part of :class:`~quicmesh.runtime.node.Node`)."""

    busy_poll: BusyPoll | None = None
    """#14: the loop's busy poller while the node runs with ``busy_poll_us`` > 0 over QUIC."""

    def _start_busy_poll(self, loop: asyncio.AbstractEventLoop) -> None:
        """#14: keep ``loop`` awake ``busy_poll_us`` after each transmit (see
        :mod:`quicmesh.runtime.busy_poll`); nothing over the in-memory transport."""
        through = self.transport.through
        if self.config.busy_poll_us > 0 and isinstance(through, WriteThrough):
            self.busy_poll = through.busy = BusyPoll(loop, self.config.busy_poll_us / 1e6)

    def _stop_busy_poll(self) -> None:
        if self.busy_poll is not None:
            self.busy_poll.close()
            through = self.transport.through
            if isinstance(through, WriteThrough):
                through.busy = None

    @property
    def node_id(self) -> str:
        """The node id's text form (for metrics and /health)."""
        return str(self.id)

    @property
    def realm(self) -> str:
        """The realm's name (from the realm file in authority mode)."""
        return self.trust.realm.name

    def realm_health(self) -> dict[str, Any]:
        """The ``/health`` ``realm`` section: ``{"mode": "open"|"authority", "name", ...}``."""
        service = getattr(self, "realm_service", None)
        if service is not None:
            doc: dict[str, Any] = service.health()
            return doc
        return {"mode": "open" if self.trust.open else "authority", "name": self.trust.realm.name}

    def console(self) -> dict[str, Any]:
        """Peers, topics, subscriptions, services and recent denials for the web console (``/ui``)."""
        return console_state(self)

    def _traffic(self) -> float:
        """Cumulative work done, for the leak sentinel's "traffic is steady" test."""
        m, r = self.mesh.counters, self.rpc.stats
        return float(m.get("published", 0) + m.get("delivered", 0) + r.calls_started + r.requests_received)

    @property
    def pending_calls(self) -> int:
        """Calls of this node not ended yet (0 once every call returned or was cancelled)."""
        return self.caller.pending

    def guard_gauges(self) -> dict[str, float]:
        """The guard's numbers: denied actions by action (``permission_denied_total:<action>``),
        gossip batches rejected, batches kept with their signature check deferred (#14),
        offences and blocked peers."""
        guard = self.core.guard
        out = {f"permission_denied_total:{action}": float(n) for action, n in guard.denied.items()}
        g = guard.counters
        out["gossip_rejected_total"] = float(g["gossip_bad_signature"] + g["gossip_not_admitted"]
                                             + g["gossip_denied"] + g["gossip_malformed"])
        out["peer_offences_total"] = float(g["offences"])
        out["gossip_signatures_deferred_total"] = float(g["gossip_signature_deferred"])  # #14
        out["peers_blocked_total"] = float(g["peers_blocked"])
        out["peers_blocked"] = float(guard.stats()["blocked"])
        return out

    def gauges(self) -> dict[str, float]:
        """Numbers for metrics: connections, subscriptions, topics, pending calls, ..., and the
        guard's (:meth:`guard_gauges`)."""
        ts = self.transport.stats()
        out: dict[str, float] = {
            "connections": float(ts.connections),
            "handshakes_in_progress": float(ts.handshakes_in_progress),
            "subscriptions": float(len(self._subs)),
            "topics": float(len(self.mesh.swarms)),
            "peers:active": float(len(self.mesh.realm.active)),
            "peers:passive": float(len(self.mesh.realm.passive)),
            "peers:known": float(len(self.mesh.book)),
            "pending_calls": float(self.caller.pending),
            "registry_entries": float(self.services.stats().get("entries", 0)),
            "running_handlers": float(self.rpc.running),
            "dropped_sends_total": float(self.dropped_sends),
            "inbox_dropped_total": float(self.inbox_dropped),
            "delivery_dropped_total": float(self.outbox_dropped),
            "dials_refused_total": float(self.dials_refused),
            "inbox_errors_total": float(self.inbox_guard.errors),
            "inbox_paused_total": float(self.inbox_guard.paused_total),
            "send_errors_total": float(self.send_errors),
            "offender_closes_total": float(self.inbox_guard.offender_closes),
            "inbox_depth": float(len(self._inbox)),
            "delivery_depth": float(self.delivery.pending),  # #14 (fastpath): paced, never dropping
            "delivery_stalls_total": float(self.delivery.stalls),
            "delivery_block_timeouts_total": float(self.delivery.block_timeouts),
            "inbox_holds_total": float(self.inbox_guard.held_total),
            "observed_reports_total": float(self.mesh.observed.received),  # #13
            "observed_reports_ignored_total": float(self.mesh.observed.ignored),
            "observed_addresses_confirmed": float(len(self.mesh.observed.confirmed())),
            "self_records_accepted_total": float(self.mesh.book.records_accepted),
            "self_records_refused_total": float(self.mesh.book.records_refused),
            "realm_join_attempts_total": float(self.mesh.counters["join_attempts"]),
            "realm_top_ups_total": float(self.mesh.counters["top_ups"]),  # a thin view's requests
            "realm_replenished_total": float(self.mesh.counters["replenished"]),  # from swarm views, connected peers
        }
        retry_stats = getattr(self.transport, "retry_stats", None)
        if retry_stats is not None:
            qs = retry_stats()
            out["quic_retries_sent_total"] = float(qs.get("retries_sent", 0))
            out["quic_retries_validated_total"] = float(qs.get("retries_validated", 0))
        for k, v in self.core.dials.stats().items():
            out[k if k.startswith("dials_in") or k == "dials_waiting" else f"{k}_total"] = float(v)
        for reason, n in ts.refused_total.items():
            out[f"handshakes_refused_total:{reason}"] = float(n)
        trimmer = self.observability.trimmer if self.observability is not None else None
        if trimmer is not None:
            out["malloc_trims_total"] = float(trimmer.trims)
            out["malloc_trim_released_bytes_total"] = float(trimmer.released_bytes)
        for key, value in self.core.failure.stats().items():
            out[f"failure_{key}" + ("_total" if key not in ("probed", "suspected", "health") else "")] = float(value)
        for key, value in self.core.groups.stats().items():  # work-queue groups (#15)
            gauge = key in ("keys", "local", "unacked", "inbound", "waiting")
            out[f"groups_{key}" + ("" if gauge else "_total")] = float(value)
        out.update(self.gateway.gauges())
        out.update(self.logs.gauges())
        agent = getattr(self, "relay_agent", None)  # #13 (relay)
        if agent is not None:
            out.update(agent.gauges())
            paths = [c.path for c in self.transport.connections()]
            out["peers_relayed"] = float(sum(1 for p in paths if p != "direct"))
            out["peers_direct"] = float(len(paths)) - out["peers_relayed"]
        out.update(self.guard_gauges())
        bp = self.busy_poll  # #14: how often and how long the loop stayed awake
        out["busy_poll_windows_total"] = float(bp.windows if bp is not None else 0)
        out["busy_poll_seconds_total"] = float(bp.seconds if bp is not None else 0.0)
        return out

    def peer_paths(self) -> list[dict[str, Any]]:
        """#13: each connected peer, the path its connection takes (``direct`` or
        ``relayed:<relay id>``), its address and (#14) the largest UDP payload it sends now."""
        return [{"peer": str(c.peer_id), "path": c.path, "address": c.remote_address,
                 "datagram_size": c.datagram_size} for c in self.transport.connections()]

    def relay_health(self) -> dict[str, Any]:
        """#13: the ``/health`` ``relay`` section."""
        agent = getattr(self, "relay_agent", None)
        return {**(agent.health() if agent is not None else {}), "peers": self.peer_paths()}

    def health(self) -> dict[str, Any]:
        """Subsystem-grouped state for ``/health``."""
        ts = self.transport.stats()
        return {
            "node_id": str(self.id),
            "realm": self.realm_health(),
            "address": self.address,
            "addresses": {**self.mesh.observed.stats(),  # #13: announced and observed addresses
                          "signed_records": {k: v for k, v in self.mesh.book.stats().items()
                                             if k.startswith("records_")}},
            "connections": {
                "open": ts.connections,
                "capacity": self.config.transport.max_connections,
                "handshakes_in_progress": ts.handshakes_in_progress,
                "refused_total": dict(ts.refused_total),
                "evicted_total": ts.evicted_total,
                "dropped_frames_total": ts.dropped_frames_total,
                "handshakes_early_total": ts.handshakes_early_total,  # #14: the proof in the Hello
                # QUIC connections held or still closing (qh3 keeps a closed one ~3 PTO)
                "quic": getattr(self.transport, "quic_state", dict)(),
            },
            "streams": {"active": ts.connections},
            "pubsub": {
                "subscriptions": len(self._subs),
                "patterns": len(self._by_pattern),
                "published_total": self.mesh.counters.get("published", 0),
                "delivered_total": self.mesh.counters.get("delivered", 0),
            },
            "address_book": {"peers": len(self.mesh.book), "capacity": self.config.address_book.capacity},
            "membership": {
                "active": len(self.mesh.realm.active),
                "passive": len(self.mesh.realm.passive),
                "active_capacity": self.config.membership.active_view,
                "passive_capacity": self.config.membership.passive_view,
                "join_attempts_total": self.mesh.counters.get("join_attempts", 0),
                "top_ups_total": self.mesh.counters.get("top_ups", 0),
                "replenished_total": self.mesh.counters.get("replenished", 0),
            },
            "gossip": self._gossip_health(),
            "failure_detection": self.core.failure.stats(),
            "rpc": {
                "pending": self.caller.pending,
                "pending_entries": self.caller.pending_entries(),
                "running_handlers": self.rpc.running,
                "services": len(self._handlers),
            },
            "registry": self.services.stats(),
            **self.logs.health(),
            "gateway": self.gateway.health(),
            "relay": self.relay_health(),  # #13 (relay)
        }

    def _gossip_health(self) -> dict[str, Any]:
        st = self.mesh.stats()
        return {
            "topics": len(st["swarms"]),
            "swarms": st["swarms"],
            "seen_ids": st["seen_ids"],
            "payload_cache": st["payload_cache"],
            "payload_cache_bytes": st["payload_cache_bytes"],
            "pending": st["dial_queues"],
            "dialing": st["dialing"],
            "ordering": st["ordering"],
        }

    def ready(self) -> tuple[bool, str]:
        """Whether the node serves traffic, and why not: started, not stopping, and joined the
        realm overlay when it has bootstrap peers."""
        if self._stopped:
            return False, "stopped"
        if not self._started:
            return False, "starting"
        if self.config.bootstrap and not len(self.mesh.realm.active):
            return False, "not joined to the realm overlay yet"
        return True, "ok"
