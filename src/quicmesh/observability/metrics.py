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
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..bounded import ContainerRegistry
from .process import asyncio_tasks, open_fds, process_rss
from .view import NodeGauges, NodeView, TransportCounters, TransportCounts, gauges_of

if TYPE_CHECKING:
    from .sentinel import LeakSentinel

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
PEERS = MetricSpec("quicmesh_peers", "gauge", "Peers per membership view.", ("view",))
TOPICS = MetricSpec("quicmesh_topics", "gauge", "Topics joined.")
SUBSCRIPTIONS = MetricSpec("quicmesh_subscriptions", "gauge", "Local subscriptions open.")
PENDING_CALLS = MetricSpec("quicmesh_pending_calls", "gauge", "Outgoing RPC calls awaiting a reply.")
CLIENTS = MetricSpec("quicmesh_clients", "gauge", "Light clients connected through the gateway.")
NODE_GAUGE = MetricSpec("quicmesh_node_gauge", "gauge", "Other node numbers, by name (NodeGauges.extra).", ("name",))
NODE_EVENTS = MetricSpec(
    "quicmesh_node_events_total", "counter", "Other node counters, by name (NodeGauges.extra).", ("name",)
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
    PEERS,
    TOPICS,
    SUBSCRIPTIONS,
    PENDING_CALLS,
    CLIENTS,
    NODE_GAUGE,
    NODE_EVENTS,
    SENTINEL_DEGRADED,
    SENTINEL_RSS_SLOPE,
    SENTINEL_REASONS,
    SENTINEL_SAMPLES,
)
"""Every metric quicmesh exports."""


def metric_names() -> frozenset[str]:
    """The sample names of every declared metric (counters with ``_total``)."""
    return frozenset(m.name for m in ALL_METRICS)


# -- container aggregation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerGroup:
    """The containers of one registry sharing a ``(name, kind)``, aggregated."""

    name: str
    kind: str
    instances: int
    size: int
    capacity: int
    peak: int
    fill: float
    evictions: int
    expirations: int
    rejections: int
    bytes: int | None
    capacity_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for /health)."""
        return {
            "kind": self.kind,
            "instances": self.instances,
            "size": self.size,
            "capacity": self.capacity,
            "fill": round(self.fill, 4),
            "peak": self.peak,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "rejections": self.rejections,
            "bytes": self.bytes,
            "capacity_bytes": self.capacity_bytes,
        }


_Key = tuple[str, str]
_Seen = tuple[Callable[[], Any], _Key, tuple[int, int, int]]


class ContainerAggregator:
    """Groups a registry's containers by ``(name, kind)`` with counters that never go back.

    A container that leaves the registry (closed or garbage collected) takes its counters with
    it; the aggregator folds its last seen counters into a retired total for its name so the
    exported sums stay monotonic. Thread-safe.
    """

    def __init__(self, registry: ContainerRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._last: dict[int, _Seen] = {}  # bounded: rebuilt every collect, one entry per live container
        self._retired: dict[_Key, tuple[int, int, int]] = {}  # bounded: one per container name/kind (fixed in code)

    def collect(self) -> list[ContainerGroup]:
        """Aggregate the live containers now, sorted by name then kind."""
        with self._lock:
            return self._collect()

    def _collect(self) -> list[ContainerGroup]:
        current: dict[int, _Seen] = {}
        acc: dict[_Key, list[Any]] = {}
        for container in self._registry:
            st = container.stats()
            key = (st.name, st.kind)
            counters = (st.evictions, st.expirations, st.rejections)
            try:
                ref: Callable[[], Any] = weakref.ref(container)
            except TypeError:  # not weak-referenceable: track by id only
                ref = _StrongRef(container)
            current[id(container)] = (ref, key, counters)
            a = acc.get(key)
            if a is None:
                a = acc[key] = [0, 0, 0, 0, 0.0, 0, 0, 0, None, None]
            a[0] += 1
            a[1] += st.size
            a[2] += st.capacity
            a[3] = max(a[3], st.peak)
            a[4] = max(a[4], st.fill)
            if st.bytes is not None:
                a[8] = (a[8] or 0) + st.bytes
            if st.capacity_bytes is not None:
                a[9] = (a[9] or 0) + st.capacity_bytes
            a[5] += counters[0]
            a[6] += counters[1]
            a[7] += counters[2]
        for ident, (ref, key, counters) in self._last.items():
            now_entry = current.get(ident)
            if now_entry is not None and now_entry[0]() is ref() and ref() is not None:
                continue
            old = self._retired.get(key, (0, 0, 0))
            self._retired[key] = (old[0] + counters[0], old[1] + counters[1], old[2] + counters[2])
        self._last = current
        groups: list[ContainerGroup] = []
        # A name with no live instance exports no series; its retired totals are kept for when
        # an instance comes back, so the counters resume where they were.
        for key in sorted(acc):
            a = acc[key]
            r = self._retired.get(key, (0, 0, 0))
            groups.append(
                ContainerGroup(
                    name=key[0],
                    kind=key[1],
                    instances=a[0],
                    size=a[1],
                    capacity=a[2],
                    peak=a[3],
                    fill=a[4],
                    evictions=a[5] + r[0],
                    expirations=a[6] + r[1],
                    rejections=a[7] + r[2],
                    bytes=a[8],
                    capacity_bytes=a[9],
                )
            )
        return groups


class _StrongRef:
    """A stand-in for ``weakref.ref`` for objects that do not support weak references."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __call__(self) -> Any:
        return self._obj


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
        for name in sorted(g.extra):
            if name.endswith("_total"):
                events.add_metric([name], float(g.extra[name]))
            else:
                other.add_metric([name], float(g.extra[name]))
        yield other
        yield events

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
