"""Simulator scenario for replicated logs: appends under a partition and a crash, every replica
identical afterwards, nothing acknowledged lost.

Theory of operation
-------------------
Every simulated node is a :class:`~quicmesh.core.node.NodeCore` with its log replication (the
code real nodes run); its store is a :class:`~quicmesh.store.MemoryStore` the simulator keeps
across a restart (the node's disk). Each node opens the scenario's log and appends at random
times during a window; an append counts as *acknowledged* when its ``Appended`` output carries
the stored operation (what ``await log.append(...)`` returns to a user). Meanwhile the network
is split in two halves for a while and one node crashes and comes back (it opens the log again,
as an application restarting would). After the window the scenario waits for every replica to
hold the same heads and then reads each store: an acknowledged operation missing from any live
replica is *lost*.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from random import Random

from ..config import NodeConfig
from ..core.log_effects import Appended, OperationStored
from ..identity import NodeId
from .network import Latency, NetworkParams
from .report import Report, build_overlay, container_peaks
from .sim import SimNode, Simulator

__all__ = ["LogScenario", "LogSimulator", "run_logs"]

LOG = "inventory"


class LogSimulator(Simulator):
    """A :class:`Simulator` that records acknowledged appends and stored operations."""

    def __init__(self, seed: int, config: NodeConfig | None = None, network: NetworkParams | None = None) -> None:
        super().__init__(seed, config, network, record_deliveries=False)
        self.acked: set[tuple[NodeId, int]] = set()  # bounded: the scenario's append count
        self.refused = 0
        self.stored = 0

    def on_log_output(self, node: SimNode, output: OperationStored | Appended) -> None:
        if isinstance(output, Appended):
            if output.stored is not None:
                self.acked.add((output.stored.op.author, output.stored.op.seq))
            else:
                self.refused += 1
        else:
            self.stored += 1


@dataclass(frozen=True, slots=True)
class LogScenario:
    """Knobs of :func:`run_logs` (defaults: 12 nodes, 20 appends each, a 20 s partition)."""

    seed: int = 1
    nodes: int = 12
    appends_per_node: int = 20
    window: float = 40.0
    partition_at: float = 10.0
    partition_for: float = 20.0
    crash_at: float = 15.0
    down_for: float = 5.0
    settle: float = 8.0
    converge_limit: float = 120.0
    latency_median: float = 0.01


def _heads(node: SimNode) -> dict[tuple[NodeId, str], int]:
    return dict(node.store.heads(LOG)) if node.store is not None else {}


def run_logs(sc: LogScenario) -> Report:
    """Run a :class:`LogScenario`."""
    config = NodeConfig()
    sim = LogSimulator(sc.seed, config, NetworkParams(latency=Latency(median=sc.latency_median)))
    rng = Random(f"logs/{sc.seed}")
    nodes = build_overlay(sim, sc.nodes)
    sim.run_for(sc.settle)
    for n in nodes:
        sim.acquire_log(n, LOG)
    sim.run_for(1.0)
    t0 = sim.now
    attempts = 0

    def append(node: SimNode, payload: bytes) -> None:
        sim.append(node, LOG, payload)

    for n in nodes:
        for k in range(sc.appends_per_node):
            at = t0 + rng.uniform(0.0, sc.window)
            sim.at(at, partial(append, n, b"%d/%d" % (n.index, k)))
            attempts += 1
    half = len(nodes) // 2
    sim.at(t0 + sc.partition_at, partial(sim.partition, [nodes[:half], nodes[half:]]))
    sim.at(t0 + sc.partition_at + sc.partition_for, sim.heal)
    victim = nodes[-2]

    def come_back() -> None:
        sim.restart(victim, nodes[:3])
        sim.acquire_log(victim, LOG)

    sim.at(t0 + sc.crash_at, partial(sim.crash, victim))
    sim.at(t0 + sc.crash_at + sc.down_for, come_back)
    sim.run_until(t0 + sc.window)
    window_end = sim.now

    def converged() -> bool:
        first = _heads(nodes[0])
        return len(first) == len(nodes) and all(_heads(n) == first for n in nodes if n.alive)

    end = sim.run_while(lambda: not converged(), sc.converge_limit, step=0.25)
    lost = 0
    for n in nodes:
        if n.store is None:
            lost += len(sim.acked)
            continue
        for author, seq in sim.acked:
            head = n.store.head(author, LOG)
            if head is None or head.seq < seq:
                lost += 1
    violations = sum(n.core.logs.sync.invalid_ops for n in nodes if n.alive)
    ahead = sum(n.core.logs.sync.ops_ahead for n in nodes if n.alive)
    report = Report("logs", sc.seed)
    report.figures = {
        "nodes": len(nodes),
        "append_attempts": attempts,
        "acknowledged": len(sim.acked),
        "refused": sim.refused,
        "lost": lost,
        "replicas_identical": converged(),
        "converged_after_window_s": round(end - window_end, 3),
        "operations_stored": sim.stored,
        "invalid_operations": violations,
        "operations_refused_ahead_of_clock": ahead,
        "events": sim.counters["events"],
    }
    report.containers = container_peaks(nodes)
    return report
