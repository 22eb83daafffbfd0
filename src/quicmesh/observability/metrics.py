"""Prometheus metrics of one node: every metric name quicmesh exports is declared here.

Theory of operation
-------------------
A node owns one :class:`NodeMetrics`: a private :class:`prometheus_client.CollectorRegistry`
(never the global one, so several nodes can live in one process) holding one
:class:`NodeCollector`. Nothing is updated eagerly: each scrape asks the node for its state and
turns it into metric families.

* Containers: every live container of ``node.registry`` is exported without any wiring, grouped
  by ``(name, kind)``. Several containers may share a name (one subscriber queue per
  subscription, for example); a per-instance label would make the series count grow with
  subscriptions or peers, so instances are *summed* (size, capacity, bytes, capacity_bytes and
  the counters), ``peak`` and ``fill`` are the *largest of any one instance*, and
  ``quicmesh_container_instances`` says how many there are. Labels are ``container`` and
  ``kind`` only, never a peer id.
* Counters stay monotonic although containers come and go: :class:`ContainerAggregator`
  remembers each live container's last counters and, when one disappears (closed or collected),
  folds them into a per-name "retired" total, so ``rate()`` never sees a false reset.
* Process: RSS and open file descriptors (psutil), asyncio task count when a loop runs
  (:mod:`.process`).
* Node gauges from :meth:`NodeView.gauges` (a :class:`NodeGauges`), readiness, and the leak
  sentinel's verdict.

The :class:`~.view.NodeView` protocol (in :mod:`.view`) is the seam the node implements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .containers import ContainerAggregator, ContainerGroup
from .process import asyncio_tasks, open_fds, process_rss
from .sentinel import LeakSentinel
from .view import NodeGauges, NodeView, TransportCounters, TransportCounts, gauges_of

__all__ = [
    "ALL_METRICS",
    "CONTENT_TYPE",
    "ContainerAggregator",
    "ContainerGroup",
    "MetricSpec",
    "NodeCollector",
    "NodeGauges",
    "NodeMetrics",
    "NodeView",
    "TransportCounters",
    "TransportCounts",
    "gauges_of",
    "metric_names",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of :func:`render`'s output (Prometheus text exposition format 0.0.4)."""


# -- declared metric names -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric: its full sample name, type, help text and label names."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """The family name handed to prometheus_client (counters without ``_total``)."""
        return self.name[: -len("_total")] if self.type == "counter" else self.name


_C = ("container", "kind")

CONTAINER_SIZE = MetricSpec("quicmesh_container_size", "gauge", "Entries held, summed over instances.", _C)
CONTAINER_CAPACITY = MetricSpec("quicmesh_container_capacity", "gauge", "Entry capacity, summed over instances.", _C)
CONTAINER_PEAK = MetricSpec("quicmesh_container_peak", "gauge", "Largest size any one instance reached.", _C)
CONTAINER_FILL = MetricSpec(
    "quicmesh_container_fill", "gauge", "Fill ratio 0..1 (entries or bytes) of the fullest instance.", _C
)
CONTAINER_INSTANCES = MetricSpec(
    "quicmesh_container_instances", "gauge", "Live containers sharing this name and kind.", _C
)
CONTAINER_EVICTIONS = MetricSpec("quicmesh_container_evictions_total", "counter", "Entries evicted to make room.", _C)
CONTAINER_EXPIRATIONS = MetricSpec(
    "quicmesh_container_expirations_total", "counter", "Entries removed because their TTL passed.", _C
)
CONTAINER_REJECTIONS = MetricSpec(
    "quicmesh_container_rejections_total", "counter", "Inserts refused because the container was full.", _C
)
CONTAINER_BYTES = MetricSpec(
    "quicmesh_container_bytes", "gauge", "Bytes held, for containers capped in bytes (summed).", _C
)
CONTAINER_CAPACITY_BYTES = MetricSpec(
    "quicmesh_container_capacity_bytes", "gauge", "Byte capacity, for containers capped in bytes (summed).", _C
)
PROCESS_RSS = MetricSpec("quicmesh_process_resident_memory_bytes", "gauge", "Resident set size of the process.")
PROCESS_FDS = MetricSpec("quicmesh_process_open_fds", "gauge", "Open file descriptors of the process.")
ASYNCIO_TASKS = MetricSpec("quicmesh_asyncio_tasks", "gauge", "Tasks alive on the node's event loop.")
NODE_INFO = MetricSpec("quicmesh_node_info", "gauge", "Always 1; labels identify the node.", ("node_id", "realm"))
NODE_READY = MetricSpec("quicmesh_node_ready", "gauge", "1 when the node is ready to serve, else 0.")
CONNECTIONS = MetricSpec("quicmesh_connections", "gauge", "Authenticated connections open.")
HANDSHAKES_IN_PROGRESS = MetricSpec("quicmesh_handshakes_in_progress", "gauge", "Handshakes under way.")
CONNECTIONS_ACCEPTED = MetricSpec("quicmesh_connections_accepted_total", "counter", "Incoming connections accepted.")
CONNECTIONS_DIALED = MetricSpec("quicmesh_connections_dialed_total", "counter", "Outgoing connections established.")
CONNECTIONS_EVICTED = MetricSpec(
    "quicmesh_connections_evicted_total", "counter", "Connections closed to make room for others."
)
HANDSHAKES_REFUSED = MetricSpec(
    "quicmesh_handshakes_refused_total", "counter", "Connections refused at admission, by reason.", ("reason",)
)
FRAMES_DROPPED = MetricSpec(
    "quicmesh_frames_dropped_total", "counter", "Frames dropped because a send buffer was full."
)
AUTH_FAILURES = MetricSpec("quicmesh_auth_failures_total", "counter", "Handshakes that failed authentication.")
HANDSHAKES_EARLY = MetricSpec("quicmesh_handshakes_early_total", "counter",
                              "Connections established with the identity proof in the Hello (one round trip fewer).")
PEERS = MetricSpec("quicmesh_peers", "gauge", "Peers per membership view.", ("view",))
TOPICS = MetricSpec("quicmesh_topics", "gauge", "Topics joined.")
SUBSCRIPTIONS = MetricSpec("quicmesh_subscriptions", "gauge", "Local subscriptions open.")
PENDING_CALLS = MetricSpec("quicmesh_pending_calls", "gauge", "Outgoing RPC calls awaiting a reply.")
CLIENTS = MetricSpec("quicmesh_clients", "gauge", "Light clients connected through the gateway.")
NODE_GAUGE = MetricSpec("quicmesh_node_gauge", "gauge", "Other node numbers, by name (NodeGauges.extra).", ("name",))
NODE_EVENTS = MetricSpec(
    "quicmesh_node_events_total", "counter", "Other node counters, by name (NodeGauges.extra).", ("name",)
)
RELAY_DROPPED = MetricSpec(  # #13 (relay)
    "quicmesh_relay_dropped_total", "counter",
    "Packets a relay did not forward, by reason (not_member, no_reservation, sessions, packets, bytes...).",
    ("reason",)
)
PATHS = MetricSpec(  # #13 (relay)
    "quicmesh_peer_paths", "gauge", "Connected peers by path: direct or relayed.", ("path",)
)
PERMISSION_DENIED = MetricSpec(
    "quicmesh_permission_denied_total", "counter",
    "Actions refused by permissions (own, of peers, of light clients), by action.", ("action",)
)
SENTINEL_DEGRADED = MetricSpec("quicmesh_sentinel_degraded", "gauge", "1 when the leak sentinel says degraded.")
SENTINEL_RSS_SLOPE = MetricSpec(
    "quicmesh_sentinel_rss_slope_bytes_per_second",
    "gauge",
    "Least-squares slope of RSS over the sentinel window (bytes per second).",
)
SENTINEL_REASONS = MetricSpec(
    "quicmesh_sentinel_reasons", "gauge", "Reasons the sentinel currently gives, by kind.", ("kind",)
)
SENTINEL_SAMPLES = MetricSpec("quicmesh_sentinel_samples", "gauge", "Samples in the sentinel's window.")

ALL_METRICS: tuple[MetricSpec, ...] = (
    CONTAINER_SIZE,
    CONTAINER_CAPACITY,
    CONTAINER_PEAK,
    CONTAINER_FILL,
    CONTAINER_INSTANCES,
    CONTAINER_EVICTIONS,
    CONTAINER_EXPIRATIONS,
    CONTAINER_REJECTIONS,
    CONTAINER_BYTES,
    CONTAINER_CAPACITY_BYTES,
    PROCESS_RSS,
    PROCESS_FDS,
    ASYNCIO_TASKS,
    NODE_INFO,
    NODE_READY,
    CONNECTIONS,
    HANDSHAKES_IN_PROGRESS,
    CONNECTIONS_ACCEPTED,
    CONNECTIONS_DIALED,
    CONNECTIONS_EVICTED,
    HANDSHAKES_REFUSED,
    FRAMES_DROPPED,
    AUTH_FAILURES,
    HANDSHAKES_EARLY,
    PEERS,
    TOPICS,
    SUBSCRIPTIONS,
    PENDING_CALLS,
    CLIENTS,
    NODE_GAUGE,
    NODE_EVENTS,
    PERMISSION_DENIED,
    RELAY_DROPPED,
    PATHS,
    SENTINEL_DEGRADED,
    SENTINEL_RSS_SLOPE,
    SENTINEL_REASONS,
    SENTINEL_SAMPLES,
)
"""Every metric quicmesh exports."""


def metric_names() -> frozenset[str]:
    """The sample names of every declared metric (counters with ``_total``)."""
    return frozenset(m.name for m in ALL_METRICS)


# -- the collector -----------------------------------------------------------------------------------


def _gauge(spec: MetricSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.family, spec.help, labels=list(spec.labels) if spec.labels else None)


def _counter(spec: MetricSpec) -> CounterMetricFamily:
    return CounterMetricFamily(spec.family, spec.help, labels=list(spec.labels) if spec.labels else None)


def _one(spec: MetricSpec, value: float) -> Metric:
    family = _counter(spec) if spec.type == "counter" else _gauge(spec)
    family.add_metric([], value)
    return family


class NodeCollector:
    """A prometheus_client collector exporting one node (register it in a private registry)."""

    def __init__(
        self,
        node: NodeView,
        sentinel: LeakSentinel | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._sentinel = sentinel
        self._clock = clock
        self._containers = ContainerAggregator(node.registry)

    @property
    def containers(self) -> ContainerAggregator:
        """The aggregator (shared with /health so both report the same counters)."""
        return self._containers

    def describe(self) -> list[Metric]:
        """No up-front description: families are produced at collect time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Produce every metric family of the node."""
        yield from self._container_families(self._containers.collect())
        yield from self._process_families()
        yield from self._node_families()
        yield from self._sentinel_families()

    def _container_families(self, groups: list[ContainerGroup]) -> Iterator[Metric]:
        columns: list[tuple[MetricSpec, Callable[[ContainerGroup], float | None]]] = [
            (CONTAINER_SIZE, lambda g: g.size),
            (CONTAINER_CAPACITY, lambda g: g.capacity),
            (CONTAINER_PEAK, lambda g: g.peak),
            (CONTAINER_FILL, lambda g: g.fill),
            (CONTAINER_INSTANCES, lambda g: g.instances),
            (CONTAINER_EVICTIONS, lambda g: g.evictions),
            (CONTAINER_EXPIRATIONS, lambda g: g.expirations),
            (CONTAINER_REJECTIONS, lambda g: g.rejections),
            (CONTAINER_BYTES, lambda g: g.bytes),
            (CONTAINER_CAPACITY_BYTES, lambda g: g.capacity_bytes),
        ]
        for spec, get in columns:
            family = _counter(spec) if spec.type == "counter" else _gauge(spec)
            for g in groups:
                value = get(g)
                if value is not None:
                    family.add_metric([g.name, g.kind], float(value))
            yield family

    def _process_families(self) -> Iterator[Metric]:
        yield _one(PROCESS_RSS, process_rss())
        fds = open_fds()
        if fds is not None:
            yield _one(PROCESS_FDS, fds)
        tasks = asyncio_tasks()
        if tasks is not None:
            yield _one(ASYNCIO_TASKS, tasks)

    def _node_families(self) -> Iterator[Metric]:
        node = self._node
        info = _gauge(NODE_INFO)
        info.add_metric([str(node.node_id), str(node.realm)], 1.0)
        yield info
        ok, _ = node.ready()
        yield _one(NODE_READY, 1.0 if ok else 0.0)
        g = gauges_of(node)
        t = g.transport
        yield _one(CONNECTIONS, t.connections)
        yield _one(HANDSHAKES_IN_PROGRESS, t.handshakes_in_progress)
        yield _one(CONNECTIONS_ACCEPTED, t.accepted_total)
        yield _one(CONNECTIONS_DIALED, t.dialed_total)
        yield _one(CONNECTIONS_EVICTED, t.evicted_total)
        refused = _counter(HANDSHAKES_REFUSED)
        for reason, count in sorted(t.refused_total.items()):
            refused.add_metric([reason], float(count))
        yield refused
        yield _one(FRAMES_DROPPED, t.dropped_frames_total)
        yield _one(AUTH_FAILURES, t.auth_failures_total)
        yield _one(HANDSHAKES_EARLY, t.handshakes_early_total)
        peers = _gauge(PEERS)
        for view, count in sorted(g.peers.items()):
            peers.add_metric([view], float(count))
        yield peers
        yield _one(TOPICS, g.topics)
        yield _one(SUBSCRIPTIONS, g.subscriptions)
        yield _one(PENDING_CALLS, g.pending_calls)
        yield _one(CLIENTS, g.clients)
        other = _gauge(NODE_GAUGE)
        events = _counter(NODE_EVENTS)
        denied = _counter(PERMISSION_DENIED)
        relay_dropped = _counter(RELAY_DROPPED)
        paths = _gauge(PATHS)
        for name in sorted(g.extra):
            family, sep, label = name.partition(":")
            if sep and family == "permission_denied_total":
                denied.add_metric([label], float(g.extra[name]))
            elif sep and family == "relay_dropped_total":
                relay_dropped.add_metric([label], float(g.extra[name]))
            elif name in ("peers_direct", "peers_relayed"):
                paths.add_metric([name[6:]], float(g.extra[name]))
            elif name.endswith("_total"):
                events.add_metric([name], float(g.extra[name]))
            else:
                other.add_metric([name], float(g.extra[name]))
        yield other
        yield events
        yield denied
        yield relay_dropped
        yield paths

    def _sentinel_families(self) -> Iterator[Metric]:
        if self._sentinel is None:
            return
        verdict = self._sentinel.verdict(self._clock())
        yield _one(SENTINEL_DEGRADED, 1.0 if verdict.degraded else 0.0)
        slope = verdict.rss_slope
        yield _one(SENTINEL_RSS_SLOPE, slope if slope is not None and math.isfinite(slope) else math.nan)
        reasons = _gauge(SENTINEL_REASONS)
        counts: dict[str, int] = {}
        for r in verdict.reasons:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        for kind, n in sorted(counts.items()):
            reasons.add_metric([kind], float(n))
        yield reasons
        yield _one(SENTINEL_SAMPLES, verdict.samples)


class NodeMetrics:
    """A node's metrics: a private registry with a :class:`NodeCollector` in it."""

    def __init__(
        self,
        node: NodeView,
        sentinel: LeakSentinel | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.collector = NodeCollector(node, sentinel, clock=clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def render(self) -> bytes:
        """The node's metrics in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return bytes(generate_latest(self.registry))


def render(node: NodeView, sentinel: LeakSentinel | None = None) -> bytes:
    """One-shot rendering of ``node``'s metrics in the Prometheus text format.

    Keeps no state between calls, so counters of containers closed since the previous call are
    not retained; a long-lived exporter should hold a :class:`NodeMetrics` instead.
    """
    return NodeMetrics(node, sentinel).render()
