"""What a simulator scenario reports, and the helpers every scenario uses: building an
overlay, checking it is connected, and the peaks of every bounded container."""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..config import NodeConfig
from .network import Latency, NetworkParams
from .sim import SimNode, Simulator

__all__ = ["Report", "build_overlay", "container_peaks", "lowest_latencies", "overlay_connected", "swarm_links"]


@dataclass
class Report:
    """What a scenario run measured. ``figures`` holds scalars; ``delivery`` the ratio per
    subscriber (by node index); ``containers`` maps a container name to (peak, capacity)."""

    name: str
    seed: int
    figures: dict[str, Any] = field(default_factory=dict)  # bounded: fixed keys per scenario
    delivery: dict[int, float] = field(default_factory=dict)  # bounded: one per node
    containers: dict[str, tuple[int, int]] = field(default_factory=dict)  # bounded: one per name

    def containers_within_bounds(self) -> bool:
        """Whether every container's peak stayed at or under its capacity."""
        return all(peak <= cap for peak, cap in self.containers.values())

    def format(self) -> str:
        """A human-readable multi-line summary."""
        lines = [f"== {self.name} (seed {self.seed})"]
        for k, v in self.figures.items():
            lines.append(f"  {k:32} {v:.4g}" if isinstance(v, float) else f"  {k:32} {v}")
        if self.delivery:
            vals = list(self.delivery.values())
            lines.append(f"  {'delivery min/mean':32} {min(vals):.4f} / {statistics.fmean(vals):.4f}"
                         f" over {len(vals)} subscribers")
        if self.containers:
            lines.append("  containers (peak / capacity):")
            for name, (peak, cap) in sorted(self.containers.items()):
                flag = "" if peak <= cap else "  OVER"
                lines.append(f"    {name:32} {peak:>7} / {cap:<7}{flag}")
        return "\n".join(lines)


def container_peaks(
    nodes: Iterable[SimNode], into: dict[str, tuple[int, int]] | None = None
) -> dict[str, tuple[int, int]]:
    """Merge the peak of every live container of ``nodes`` by name (max peak, max capacity)."""
    out = {} if into is None else into
    for n in nodes:
        for st in n.registry.snapshot():
            peak, cap = out.get(st.name, (0, 0))
            out[st.name] = (max(peak, st.peak), max(cap, st.capacity))
            if st.capacity_bytes is not None and st.bytes is not None:
                bname = st.name + "[bytes]"
                bpeak, bcap = out.get(bname, (0, 0))
                out[bname] = (max(bpeak, st.bytes), max(bcap, st.capacity_bytes))
    return out


def build_overlay(sim: Simulator, count: int, *, spacing: float = 0.05, bootstraps: int = 3) -> list[SimNode]:
    """Create ``count`` nodes joining through the first ``bootstraps`` (every 10th by address)."""
    nodes = [sim.add_node() for _ in range(count)]
    for i, n in enumerate(nodes):
        contacts = nodes[: min(i, bootstraps)]
        by_addr = i % 10 == 9
        sim.at(sim.now + i * spacing, partial(sim.join, n, contacts, by_address=by_addr))
    return nodes


def _view_links(nodes: Iterable[SimNode], swarm: str | None) -> set[tuple[int, int]]:
    """``(a, b)`` node index pairs, ``a < b``, for every peer in a live node's active view (of the
    realm, or of ``swarm``) that is one of the live ``nodes`` (either end's view makes a link)."""
    live = [n for n in nodes if n.alive]
    index = {n.id: n.index for n in live}
    links: set[tuple[int, int]] = set()  # bounded: the live nodes' active views
    for n in live:
        if swarm is None:
            peers = n.mesh.realm.active_peers()
        else:
            sw = n.mesh.swarms.peek(swarm)
            peers = sw.hv.active_peers() if sw is not None else []
        for p in peers:
            j = index.get(p)
            if j is not None and j != n.index:
                links.add((min(n.index, j), max(n.index, j)))
    return links


def overlay_connected(nodes: list[SimNode], swarm: str | None = None) -> bool:
    """Whether the active views of the live ``nodes`` (realm, or ``swarm``) form one component."""
    live = [n.index for n in nodes if n.alive]
    if not live:
        return True
    adj: dict[int, list[int]] = {i: [] for i in live}
    for a, b in _view_links(nodes, swarm):
        adj[a].append(b)
        adj[b].append(a)
    seen = {live[0]}
    todo = [live[0]]
    while todo:
        for y in adj[todo.pop()]:
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return len(seen) == len(live)


def swarm_links(sim: Simulator, swarm: str) -> frozenset[tuple[int, int]]:
    """The links of the swarm overlay as it stands: ``(a, b)`` node index pairs, ``a < b``, for
    every peer in a live node's active view of ``swarm`` (either end's view makes a link)."""
    return frozenset(_view_links(sim.nodes, swarm))


def lowest_latencies(sim: Simulator, source: int, links: Iterable[tuple[int, int]]) -> dict[int, float]:
    """The lowest-latency path from node ``source`` (an index) to every node reachable over
    ``links`` (index pairs, each its base latency, :meth:`Simulator.link_latency`): node index
    -> seconds (Dijkstra)."""
    adj: dict[int, list[int]] = {}  # bounded: one entry per node on a link
    for a, b in links:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    dist = {source: 0.0}
    todo = [(0.0, source)]
    while todo:
        d, i = heapq.heappop(todo)
        if d > dist[i]:
            continue
        for j in adj.get(i, ()):
            dj = d + sim.link_latency(i, j)
            if dj < dist.get(j, float("inf")):
                dist[j] = dj
                heapq.heappush(todo, (dj, j))
    return dist


def _sim(seed: int, config: NodeConfig, latency_median: float, loss: float = 0.0, duplicate: float = 0.0,
         loss_mode: str = "retransmit") -> Simulator:
    return Simulator(seed, config, NetworkParams(latency=Latency(median=latency_median), loss=loss,
                                                 loss_mode=loss_mode, duplicate=duplicate))


# -- broadcast: no loss, loss, duplication, churn ----------------------------------------------------
