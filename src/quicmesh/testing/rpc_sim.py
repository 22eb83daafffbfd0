"""Simulator scenarios for RPC across the mesh: registry leases, provider choice, failover.

Theory of operation
-------------------
Every simulated node is a :class:`~quicmesh.core.node.NodeCore`, the core real nodes run: the
mesh, the service registry, the RPC machine and the call planner composed and routed in one
place (registry adverts over the mesh, lookups, pinning of connections in use, one timer). The
:class:`RpcSimulator` adds only what a scenario measures: a :class:`CallRecord` per call
(start, end, outcome), and the adverts seen on the wire (a scenario replays a captured stale
one, as an attacker on the path could).

The scenarios (:class:`FailoverScenario`, :class:`LeaseScenario`) return
:class:`~quicmesh.testing.scenarios.Report` s whose figures the tests assert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from random import Random

from ..config import NodeConfig, RegistryConfig, RpcConfig
from ..core.mesh_messages import MGossip
from ..core.registry import REGISTRY_TOPIC
from ..core.registry_messages import REGISTRY_MESSAGES
from ..core.rpc import CallResolved
from ..core.wire import Message
from ..identity import NodeId
from .network import Latency, NetworkParams
from .report import Report, build_overlay, container_peaks
from .sim import SimNode, Simulator

__all__ = [
    "CallRecord",
    "FailoverScenario",
    "LeaseScenario",
    "RpcSimulator",
    "run_failover",
    "run_lease",
]


@dataclass(slots=True)
class CallRecord:
    """One scenario call: when it started, when it ended, how."""

    start: float
    timeout: float
    caller: int
    end: float | None = None
    ok: bool = False
    error: str | None = None


class RpcSimulator(Simulator):
    """A :class:`Simulator` that records every call's outcome and the first advert each provider
    put on the wire (its handlers echo after ``handler_delay``)."""

    def __init__(self, seed: int, config: NodeConfig | None = None, network: NetworkParams | None = None, *,
                 handler_delay: float = 0.001, clock_skew: float = 0.0) -> None:
        self.calls: dict[object, CallRecord] = {}  # bounded: the scenario's call count
        self.first_advert: dict[NodeId, bytes] = {}  # bounded: one per provider
        super().__init__(seed, config, network, record_deliveries=False, handler_delay=handler_delay,
                         clock_skew=clock_skew)

    def call(self, node: SimNode, name: str, payload: bytes, timeout: float, token: object) -> None:
        if node.alive:
            self.calls[token] = CallRecord(self.now, timeout, node.index)
        super().call(node, name, payload, timeout, token)

    def inject(self, node: SimNode, effects: Sequence[object]) -> None:
        """Execute ``effects`` on behalf of ``node`` (used to replay a stale advert)."""
        self._apply(node, effects)

    def on_resolved(self, node: SimNode, outcome: CallResolved) -> None:
        rec = self.calls.get(outcome.token)
        if rec is None or rec.end is not None:
            raise AssertionError(f"call {outcome.token!r} resolved twice or unknown")
        rec.end = self.now
        rec.ok = outcome.error is None
        rec.error = None if outcome.error is None else type(outcome.error).__name__

    def _send(self, node: SimNode, peer: NodeId, msg: Message) -> None:
        if isinstance(msg, MGossip) and msg.topic == REGISTRY_TOPIC and node.id not in self.first_advert:
            if msg.publisher == node.id.raw and msg.payloads:
                self.first_advert[node.id] = msg.payloads[0]
        super()._send(node, peer, msg)


def _poll(sim: Simulator, every: float, until: float, fn: Callable[[], None]) -> None:
    def tick() -> None:
        fn()
        if sim.now + every <= until:
            sim.at(sim.now + every, tick)

    sim.at(sim.now, tick)


# -- failover: 50 nodes, 5 providers, 10,000 calls, 2 providers crash --------------------------------


@dataclass(frozen=True)
class FailoverScenario:
    """``nodes`` nodes; ``providers`` advertise ``name``; the others make ``calls`` calls at
    ``rate`` per second, each with ``timeout``; ``crashes`` providers crash during the calls;
    ``late_joiners`` fresh nodes join mid-run and call at once (exercising lookups); a stale
    advert of a live provider is replayed realm-wide after it refreshed. Then every provider
    crashes and ``tail_calls`` more calls are made, which must all fail with typed errors."""

    name: str = "rpc_failover"
    seed: int = 1
    nodes: int = 50
    providers: int = 5
    calls: int = 10_000
    rate: float = 100.0
    timeout: float = 5.0
    crashes: int = 2
    late_joiners: int = 2
    tail_calls: int = 450
    lease_ttl: float = 30.0
    sweep_interval: float = 5.0
    policy: str = "random"
    latency_median: float = 0.010
    settle: float = 20.0


def _config(lease_ttl: float, sweep: float, policy: str, timeout: float) -> NodeConfig:
    return NodeConfig(
        registry=RegistryConfig(lease_ttl=lease_ttl, sweep_interval=sweep),
        rpc=RpcConfig(provider_policy=policy, default_timeout=timeout),
    )


def run_failover(sc: FailoverScenario) -> Report:
    """Run a :class:`FailoverScenario`."""
    sim = RpcSimulator(sc.seed, _config(sc.lease_ttl, sc.sweep_interval, sc.policy, sc.timeout),
                       NetworkParams(latency=Latency(median=sc.latency_median)))
    rng = Random(f"rpc-failover/{sc.seed}")
    nodes = build_overlay(sim, sc.nodes)
    sim.run_for(sc.settle / 2)
    for n in nodes:
        sim.start_services(n)
    sim.run_for(sc.settle / 2)
    providers = nodes[3:3 + sc.providers]
    prov_ids = {p.id for p in providers}
    for p in providers:
        sim.advertise(p, "echo")
    sim.run_for(3.0)
    known_before = sum(1 for n in nodes if len(n.core.services.providers("echo", sim.now)) == sc.providers)
    callers = [n for n in nodes if n.id not in prov_ids]
    t0 = sim.now
    window = sc.calls / sc.rate
    crashed = providers[-sc.crashes:] if sc.crashes else []
    crash_at = {p.index: t0 + window * (k + 1) / (sc.crashes + 2) for k, p in enumerate(crashed)}
    for p in crashed:
        sim.at(crash_at[p.index], partial(sim.crash, p))
    late: list[SimNode] = []
    late_ready: list[SimNode] = []

    def add_late() -> None:
        # it calls as soon as it has a realm neighbour, before it subscribes to the registry
        # topic: its first calls find no entry and look the name up
        n = sim.add_node()
        late.append(n)
        late_ready.append(n)
        sim.join(n, nodes[:3])
        sim.at(sim.now + 5.0, partial(sim.start_services, n))

    for k in range(sc.late_joiners):
        sim.at(t0 + window * (k + 1) / (sc.late_joiners + 1), add_late)
    # a stale advert replayed after its provider refreshed (through the mesh, in a new batch)
    stale_source = providers[0]
    stale_payload = sim.first_advert.get(stale_source.id)
    assert stale_payload is not None
    replay_at = t0 + 0.75 * sc.lease_ttl  # after two refreshes (every ttl / 3), before it expired

    def replay() -> None:
        # a new gossip batch of the provider's node carrying its old advert (another node cannot
        # relay it in a batch of its own: the advert must be the batch publisher's, #11)
        sim.inject(stale_source, stale_source.core.mesh.publish(REGISTRY_TOPIC, stale_payload, sim.now))

    sim.at(replay_at, replay)

    def one_call(k: int) -> None:
        pool = [n for n in callers if n.alive]
        if k % 10 == 0:
            pool = [n for n in late_ready if len(n.mesh.realm.active) > 0] or pool
        node = pool[rng.randrange(len(pool))]
        sim.call(node, "echo", k.to_bytes(4, "big"), sc.timeout, k)

    for k in range(sc.calls):
        sim.at(t0 + k / sc.rate, partial(one_call, k))
    # poll: when crashed providers vanished everywhere; whether live ones were ever dropped
    vanished: dict[int, float] = {}
    dropped_live = 0
    seen_live: set[tuple[int, NodeId]] = set()  # bounded: nodes x providers

    def check() -> None:
        nonlocal dropped_live
        live_nodes = [n for n in sim.nodes if n.alive]
        for p in crashed:
            if p.index in vanished or sim.now < crash_at[p.index]:
                continue
            if all(n.core.services.entry(p.id, "echo") is None for n in live_nodes):
                vanished[p.index] = sim.now - crash_at[p.index]
        for n in live_nodes:
            reg = n.core.services
            for p in providers:
                if not p.alive:
                    continue
                has = reg.entry(p.id, "echo") is not None
                if has:
                    seen_live.add((n.index, p.id))
                elif (n.index, p.id) in seen_live:
                    dropped_live += 1
                    seen_live.discard((n.index, p.id))

    end = t0 + window + sc.timeout + sc.lease_ttl + 2 * sc.sweep_interval
    _poll(sim, 0.5, end, check)
    sim.run_until(end)
    pending_main = _pending(sim)
    main_stats = [n.core.caller.stats for n in sim.nodes if n.alive]
    main_counts = {k: sum(getattr(st, k) for st in main_stats) for k in ("attempts", "failovers", "dials", "lookups")}

    # tail: every remaining provider crashes; calls must fail with a typed error within their
    # deadline (CallTimeout while dead providers are still advertised, NoProvider once they are
    # suspected or their leases lapsed)
    for p in providers:
        sim.crash(p)
    tail_window = sc.lease_ttl + sc.sweep_interval + 10.0
    t1 = sim.now
    for k in range(sc.tail_calls):
        sim.at(t1 + k * tail_window / max(sc.tail_calls, 1), partial(
            lambda k: sim.call(callers[rng.randrange(len(callers))], "echo", b"", sc.timeout, ("tail", k)), k))
    sim.run_until(t1 + tail_window + sc.timeout + 1.0)
    tail = [r for t, r in sim.calls.items() if isinstance(t, tuple)]
    tail_errors: dict[str, int] = {}
    for r in tail:
        tail_errors[r.error or "ok"] = tail_errors.get(r.error or "ok", 0) + 1

    recs = [r for t, r in sim.calls.items() if not isinstance(t, tuple)]
    ok = [r for r in recs if r.ok]
    latencies = sorted((r.end or 0) - r.start for r in ok)
    over_deadline = sum(1 for r in recs if r.end is None or r.end - r.start > r.timeout + 1e-9)
    errors: dict[str, int] = {}
    for r in recs:
        if not r.ok:
            errors[r.error or "none"] = errors.get(r.error or "none", 0) + 1
    regs = [n.core.services for n in sim.nodes if n.alive]
    stale_seen = sum(r.counters["stale"] for r in regs)
    stale_won = sum(1 for r in regs if (e := r.entry(stale_source.id, "echo")) is not None
                    and e.advert.v <= _version(stale_payload))
    report = Report(sc.name, sc.seed)
    report.figures = {
        "nodes": sc.nodes + len(late),
        "providers": sc.providers,
        "crashed": len(crashed),
        "nodes_knowing_all_providers_at_start": known_before,
        "calls": len(recs),
        "succeeded": len(ok),
        "failed": len(recs) - len(ok),
        "errors": errors,
        "ended_past_deadline": over_deadline,
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "latency_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
        "latency_max_ms": 1000 * latencies[-1] if latencies else 0.0,
        **main_counts,
        "late_joiner_calls": sum(1 for r in recs if r.caller in {n.index for n in late}),
        "vanished_after_crash_s": {i: round(v, 3) for i, v in sorted(vanished.items())},
        "vanish_bound_s": sc.lease_ttl + sc.sweep_interval,
        "live_entries_dropped": dropped_live,
        "stale_replays_rejected": stale_seen,
        "stale_replay_won": stale_won,
        "pending_after_calls": pending_main,
        "tail_calls": len(tail),
        "tail_outcomes": tail_errors,
        "tail_past_deadline": sum(1 for r in tail if r.end is None or r.end - r.start > r.timeout + 1e-9),
        "pending_after_tail": _pending(sim),
        "events": sim.counters["events"],
    }
    report.containers = container_peaks(sim.nodes)
    return report


def _pending(sim: RpcSimulator) -> dict[str, int]:
    pending: dict[str, int] = {}
    for n in sim.nodes:
        if n.alive:
            for k, v in n.core.pending_entries().items():
                pending[k] = pending.get(k, 0) + v
    return pending


def _version(payload: bytes) -> int:
    from ..core.registry_messages import RAdvert
    from ..core.wire import Codec

    ad = Codec(REGISTRY_MESSAGES).decode(payload)
    assert isinstance(ad, RAdvert)
    return ad.v


# -- leases: refresh keeps live services, silence and withdrawal remove them ----------------------------


@dataclass(frozen=True)
class LeaseScenario:
    """``nodes`` nodes; three providers advertise with a short ``ttl``: one stays for
    ``duration`` (many leases), one crashes (stops refreshing), one shuts down (withdraws)."""

    name: str = "rpc_leases"
    seed: int = 2
    nodes: int = 30
    ttl: float = 6.0
    sweep_interval: float = 2.0
    duration: float = 120.0
    clock_skew: float = 0.5
    latency_median: float = 0.010
    settle: float = 20.0


def run_lease(sc: LeaseScenario) -> Report:
    """Run a :class:`LeaseScenario`."""
    sim = RpcSimulator(sc.seed, _config(sc.ttl, sc.sweep_interval, "random", 5.0),
                       NetworkParams(latency=Latency(median=sc.latency_median)), clock_skew=sc.clock_skew)
    nodes = build_overlay(sim, sc.nodes)
    sim.run_for(sc.settle / 2)
    for n in nodes:
        sim.start_services(n)
    sim.run_for(sc.settle / 2)
    stay, silent, leaver = nodes[3], nodes[4], nodes[5]
    for p in (stay, silent, leaver):
        sim.advertise(p, "svc", ttl=sc.ttl)
    sim.run_for(2.0)
    t0 = sim.now
    stop_at = t0 + sc.duration / 3
    sim.at(stop_at, partial(sim.crash, silent))
    sim.at(stop_at, partial(sim.shutdown, leaver))
    sim.at(stop_at + 1.0, partial(sim.leave, leaver))  # withdrawals published, then connections closed
    others = [n for n in nodes if n not in (stay, silent, leaver)]
    gone: dict[str, float] = {}
    stay_missing = 0
    stay_checks = 0

    def check() -> None:
        nonlocal stay_missing, stay_checks
        for label, p in (("silent", silent), ("leaver", leaver)):
            if label not in gone and sim.now >= stop_at and all(
                n.core.services.entry(p.id, "svc") is None for n in others
            ):
                gone[label] = sim.now - stop_at
        for n in others:
            stay_checks += 1
            if not n.core.services.providers("svc", sim.now) or n.core.services.entry(stay.id, "svc") is None:
                stay_missing += 1

    _poll(sim, 0.25, t0 + sc.duration, check)
    sim.run_until(t0 + sc.duration)
    regs = [n.core.services for n in others]
    report = Report(sc.name, sc.seed)
    report.figures = {
        "nodes": sc.nodes,
        "ttl": sc.ttl,
        "sweep_interval": sc.sweep_interval,
        "clock_skew_max_s": sc.clock_skew,
        "leases_outlived_by_live_provider": sc.duration / sc.ttl,
        "live_provider_missing_checks": stay_missing,
        "live_provider_checks": stay_checks,
        "silent_vanished_after_s": gone.get("silent", -1.0),
        "withdrawn_vanished_after_s": gone.get("leaver", -1.0),
        "refreshes_received": sum(r.counters["refreshed"] for r in regs),
        "expired": sum(r.counters["expired"] for r in regs),
        "withdrawn": sum(r.counters["withdrawn"] for r in regs),
        "invalid_signature": sum(r.counters["invalid_signature"] for r in regs),
        "events": sim.counters["events"],
    }
    report.containers = container_peaks(sim.nodes)
    return report


def main() -> None:  # pragma: no cover - a convenience for humans
    """Print both scenario reports."""
    for rep in (run_failover(FailoverScenario()), run_lease(LeaseScenario())):
        print(rep.format())


if __name__ == "__main__":  # pragma: no cover
    main()
