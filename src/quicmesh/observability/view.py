"""The seam between a node and its observability: what a node shows (:class:`NodeView`), the
gauges it returns (:class:`NodeGauges`), and its transport's counters (:class:`TransportCounters`).

Observability imports nothing from the runtime: a node satisfies these protocols structurally
(``runtime.transport.TransportStats`` is a :class:`TransportCounters`), and
:class:`TransportCounts` is the plain value observability builds itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..bounded import ContainerRegistry

__all__ = ["NodeGauges", "NodeView", "TransportCounters", "TransportCounts", "gauges_of"]


class TransportCounters(Protocol):
    """A transport's counters as observability reads them (read-only; plain attributes satisfy it)."""

    @property
    def connections(self) -> int:
        """Authenticated connections open."""

    @property
    def handshakes_in_progress(self) -> int:
        """Handshakes under way."""

    @property
    def accepted_total(self) -> int:
        """Incoming connections accepted."""

    @property
    def dialed_total(self) -> int:
        """Outgoing connections established."""

    @property
    def refused_total(self) -> Mapping[str, int]:
        """Connections refused at admission, by reason."""

    @property
    def evicted_total(self) -> int:
        """Connections closed to make room for others."""

    @property
    def dropped_frames_total(self) -> int:
        """Frames dropped because a send buffer was full."""

    @property
    def auth_failures_total(self) -> int:
        """Handshakes that failed authentication."""

    @property
    def handshakes_early_total(self) -> int:
        """Connections established with the identity proof in the ``Hello`` (#14)."""


@dataclass(slots=True)
class TransportCounts:
    """A plain :class:`TransportCounters`: the default of :attr:`NodeGauges.transport` and what
    :meth:`NodeGauges.from_mapping` builds."""

    connections: int = 0
    handshakes_in_progress: int = 0
    accepted_total: int = 0
    dialed_total: int = 0
    refused_total: dict[str, int] = field(default_factory=dict)  # bounded: one key per refusal reason
    evicted_total: int = 0
    dropped_frames_total: int = 0
    auth_failures_total: int = 0
    handshakes_early_total: int = 0


@dataclass(frozen=True, slots=True)
class NodeGauges:
    """The node's current numbers, as returned by :meth:`NodeView.gauges`.

    Mappings are keyed by a small fixed vocabulary (view names, refusal reasons), never by peer.
    """

    peers: Mapping[str, int] = field(default_factory=dict)  # bounded: one entry per membership view
    """Peers per membership view, e.g. ``{"active": 5, "passive": 30, "known": 120}``."""
    topics: int = 0
    """Topics joined."""
    subscriptions: int = 0
    """Local subscriptions open."""
    pending_calls: int = 0
    """Outgoing RPC calls awaiting a reply."""
    clients: int = 0
    """Light clients connected through the gateway."""
    transport: TransportCounters = field(default_factory=TransportCounts)
    """The transport's counters: connections, handshakes, refusals by reason, drops."""
    extra: Mapping[str, float] = field(default_factory=dict)  # bounded: fixed key set chosen by the node's code
    """Other numbers by a fixed name (``running_handlers``, ``inbox_dropped_total``...): exported
    as ``quicmesh_node_events_total{name}`` when the name ends in ``_total``, else as
    ``quicmesh_node_gauge{name}``. Never key this by peer, topic or anything unbounded."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> NodeGauges:
        """Build from a flat mapping, the other shape :meth:`NodeView.gauges` may return.

        Keys: ``connections``, ``handshakes_in_progress``, ``accepted_total``, ``dialed_total``,
        ``evicted_total``, ``dropped_frames_total``, ``auth_failures_total``, ``handshakes_early_total``
        (transport);
        ``topics``, ``subscriptions``, ``pending_calls``, ``clients``; ``peers:<view>`` and
        ``handshakes_refused_total:<reason>`` for the labelled ones; anything else goes to
        :attr:`extra`.
        """
        transport = TransportCounts()
        own: dict[str, int] = {}
        peers: dict[str, int] = {}
        extra: dict[str, float] = {}
        for key, raw in values.items():
            v = float(raw)
            name, sep, label = key.partition(":")
            if sep and name == "peers":
                peers[label] = int(v)
            elif sep and name == "handshakes_refused_total":
                transport.refused_total[label] = int(v)
            elif key in _TRANSPORT_KEYS:
                setattr(transport, key, int(v))
            elif key in _OWN_KEYS:
                own[key] = int(v)
            else:
                extra[key] = v
        return cls(peers=peers, transport=transport, extra=extra, **own)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by /health and ``quicmesh status``)."""
        t = self.transport
        return {
            "connections": t.connections,
            "handshakes_in_progress": t.handshakes_in_progress,
            "peers": dict(self.peers),
            "topics": self.topics,
            "subscriptions": self.subscriptions,
            "pending_calls": self.pending_calls,
            "clients": self.clients,
            "accepted_total": t.accepted_total,
            "dialed_total": t.dialed_total,
            "handshakes_refused_total": dict(t.refused_total),
            "evicted_total": t.evicted_total,
            "dropped_frames_total": t.dropped_frames_total,
            "auth_failures_total": t.auth_failures_total,
            "handshakes_early_total": t.handshakes_early_total,
            **{k: self.extra[k] for k in sorted(self.extra)},
        }


_TRANSPORT_KEYS = frozenset(
    (
        "connections",
        "handshakes_in_progress",
        "accepted_total",
        "dialed_total",
        "evicted_total",
        "dropped_frames_total",
        "auth_failures_total",
        "handshakes_early_total",
    )
)
_OWN_KEYS = frozenset(("topics", "subscriptions", "pending_calls", "clients"))


def gauges_of(node: NodeView) -> NodeGauges:
    """``node.gauges()`` as a :class:`NodeGauges`, whichever shape the node returned."""
    g = node.gauges()
    return g if isinstance(g, NodeGauges) else NodeGauges.from_mapping(g)


class NodeView(Protocol):
    """What observability needs from a node. Plain attributes satisfy the properties.

    Every method is called on the event loop (or the scraping thread) and must be cheap and
    non-blocking: a snapshot of counters, no I/O.
    """

    @property
    def node_id(self) -> str:
        """The node id in its text form."""

    @property
    def realm(self) -> str:
        """The mesh realm."""

    @property
    def registry(self) -> ContainerRegistry:
        """The registry every container of this node is registered with."""

    def health(self) -> Mapping[str, Any]:
        """Subsystem-grouped JSON-ready numbers: ``{"address_book": {...}, "streams": {...},
        "gossip": {...}, "rpc": {...}, "connections": {...}, "store": {...}}`` (scalars such as
        ``"address": "HOST:PORT"`` are passed through too). The keys ``status``, ``node_id``,
        ``realm``, ``ready``, ``reasons``, ``gauges``, ``containers``, ``process`` and
        ``sentinel`` are reserved for /health itself: the endpoint fills them."""

    def gauges(self) -> NodeGauges | Mapping[str, float]:
        """The node's current gauges: a :class:`NodeGauges`, or a flat mapping in the shape
        :meth:`NodeGauges.from_mapping` reads."""

    def ready(self) -> tuple[bool, str]:
        """``(True, "ready")`` once the node serves traffic, else ``(False, why)``."""
