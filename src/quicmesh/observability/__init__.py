"""Observability of a node: Prometheus metrics, /health, the leak sentinel, ``quicmesh status``.

A node plugs in by implementing :class:`NodeView` and running one :class:`Observability`::

    obs = Observability(node, config.observability, http=config.http,
                        traffic_counter=lambda: messages_in_total + messages_out_total)
    address = await obs.start()     # "HOST:PORT" of the HTTP endpoint, or None when http is None
    ...
    await obs.stop()

``traffic_counter`` (optional) is any cumulative count of the node's work; the sentinel uses its
rate to tell a leak from memory that follows load.

Everything is also usable piecemeal: :class:`NodeMetrics` (a private prometheus registry),
:class:`LeakSentinel` and :class:`SentinelTask`, :class:`HttpEndpoint`; the process probes
(RSS, fds, the C heap) are in :mod:`.process`. The node is seen only through the protocols of
:mod:`.view`: observability imports nothing from the runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import ObservabilityConfig
from .containers import ContainerAggregator, ContainerGroup
from .process import open_fds, process_rss
from .sentinel import HISTORY_NAME, LeakSentinel, Reason, SentinelTask, TrimTask, Verdict, least_squares_slope
from .view import NodeGauges, NodeView, TransportCounters, TransportCounts, gauges_of

if TYPE_CHECKING:
    from .http import HttpEndpoint, health_document, is_loopback
    from .metrics import ALL_METRICS, CONTENT_TYPE, MetricSpec, NodeCollector, NodeMetrics, metric_names, render

_LAZY = {
    "HttpEndpoint": "http", "health_document": "http", "is_loopback": "http",
    "ALL_METRICS": "metrics", "CONTENT_TYPE": "metrics", "MetricSpec": "metrics", "NodeCollector": "metrics",
    "NodeMetrics": "metrics", "metric_names": "metrics", "render": "metrics",
}
"""Names of this package that live in :mod:`.http` (aiohttp) and :mod:`.metrics`
(prometheus-client): imported when first used, i.e. when a node serves HTTP, so a node without
an HTTP endpoint loads neither (#14: an idle ``quicmesh node`` without ``--http`` 65.9 -> 51.3 MiB
resident)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "ALL_METRICS",
    "CONTENT_TYPE",
    "HISTORY_NAME",
    "ContainerAggregator",
    "ContainerGroup",
    "HttpEndpoint",
    "LeakSentinel",
    "MetricSpec",
    "NodeCollector",
    "NodeGauges",
    "NodeMetrics",
    "NodeView",
    "Observability",
    "Reason",
    "SentinelTask",
    "TransportCounters",
    "TransportCounts",
    "TrimTask",
    "Verdict",
    "gauges_of",
    "health_document",
    "is_loopback",
    "least_squares_slope",
    "metric_names",
    "open_fds",
    "process_rss",
    "render",
]


class Observability:
    """A node's sentinel, its sampling task and (when ``http`` is given) its HTTP endpoint.

    ``http`` is ``"HOST:PORT"`` (``NodeConfig.http``) or ``None`` for no endpoint.
    ``traffic_counter`` returns a cumulative count of the node's work (see :class:`SentinelTask`).
    ``sample_rss`` defaults to this process's RSS.
    """

    def __init__(
        self,
        node: NodeView,
        config: ObservabilityConfig | None = None,
        *,
        http: str | None = None,
        traffic_counter: Callable[[], float] | None = None,
        sample_rss: Callable[[], int] = process_rss,
    ) -> None:
        cfg = config or ObservabilityConfig()
        self.sentinel = LeakSentinel(cfg, node.registry, sample_rss)
        self.task = SentinelTask(self.sentinel, traffic_counter=traffic_counter)
        self.trimmer = TrimTask(cfg.malloc_trim_interval) if cfg.malloc_trim_interval > 0 else None
        """Returns the C heap's free pages every ``malloc_trim_interval`` seconds (``None``: off)."""
        self.endpoint: HttpEndpoint | None = None
        if http is not None:
            from .http import HttpEndpoint

            host, _, port = http.rpartition(":")
            self.endpoint = HttpEndpoint(node, host, int(port), self.sentinel, config=cfg)

    async def start(self) -> str | None:
        """Start sampling and serving; returns the HTTP endpoint's bound ``HOST:PORT`` or ``None``."""
        self.task.start()
        if self.trimmer is not None:
            self.trimmer.start()
        if self.endpoint is None:
            return None
        try:
            return await self.endpoint.start()
        except BaseException:
            await self.task.stop()
            if self.trimmer is not None:
                await self.trimmer.stop()
            raise

    async def stop(self) -> None:
        """Stop the endpoint and the sampling task; idempotent."""
        if self.endpoint is not None:
            await self.endpoint.stop()
        await self.task.stop()
        if self.trimmer is not None:
            await self.trimmer.stop()
