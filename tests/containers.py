"""Which containers a "returns to its baseline" test may compare as static.

A leak test takes every container's size, runs the work under test (subscribe/close cycles, calls,
sessions) and asserts each size came back to where it was. That is only meaningful for containers
whose size follows the work. A few follow the clock instead: a timer adds to them whatever the
node does, so their size depends on how long the test ran, and a slow run on a loaded machine
(one timer tick more between the two snapshots) fails although nothing leaked (issue #16: the
leak sentinel's history made ``test_subscribe_close_cycles_keep_rss_and_containers_flat`` flaky).

The rule: a container is *time-driven* when a periodic timer of the node appends to it on its own
schedule, independent of the traffic. Those are listed in :data:`TIME_DRIVEN` and left out of
static comparisons; their own bound is tested where they live (``test_sentinel.py``). Containers
that merely *expire* entries (TTL maps) are not time-driven in this sense: their entries come from
the work under test, and a leak test must see them return. Messages in flight at the instant of a
snapshot are a separate, per-test ``transient`` set.
"""

from __future__ import annotations

from collections.abc import Collection

from quicmesh.bounded import ContainerRegistry
from quicmesh.observability import HISTORY_NAME

TIME_DRIVEN: frozenset[str] = frozenset({
    HISTORY_NAME,  # the leak sentinel appends one sample every ``sentinel_interval`` (up to its window)
})
"""Containers filled by a timer rather than by the work under test."""


def static_sizes(registry: ContainerRegistry, transient: Collection[str] = ()) -> dict[str, int]:
    """The size of every container of ``registry`` by name (instances sharing a name summed),
    leaving out :data:`TIME_DRIVEN` containers and the names in ``transient``."""
    out: dict[str, int] = {}
    for s in registry.snapshot():
        if s.name in TIME_DRIVEN or s.name in transient:
            continue
        out[s.name] = out.get(s.name, 0) + s.size
    return out
