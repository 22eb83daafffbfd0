"""Simulator scenarios for RPC across the mesh: registry leases, provider choice, failover.

Theory of operation
-------------------
:class:`ServiceMesh` is the per-node glue the asyncio Node will also need: one
:class:`~quicmesh.core.mesh.Mesh` (it *is* one, so the unmodified
:class:`~quicmesh.testing.sim.Simulator` drives it) composed with a
:class:`~quicmesh.core.registry.Registry`, an :class:`~quicmesh.core.rpc.Rpc` and a
:class:`~quicmesh.core.caller.Caller`. It routes events and effects exactly as a driver must:

* every node subscribes to :data:`~quicmesh.core.registry.REGISTRY_PATTERN`; a ``Deliver`` on
  :data:`~quicmesh.core.registry.REGISTRY_TOPIC` goes to ``Registry.handle_advert``;
  a :class:`~quicmesh.core.registry.Broadcast` becomes ``Mesh.publish``;
* ``r.*`` messages go to ``Registry.handle_message``; ``Request``/``Reply``/``ReplyError``/
  ``Services`` to ``Caller.handle_message``; everything else to the mesh;
* ``peer_connected``/``peer_disconnected``/``dial_failed`` go to the mesh *and* the caller;
* :class:`~quicmesh.core.registry.LookupDone` goes to ``Caller.lookup_done``; ``Invoke`` runs the
  scenario's handler (an echo after ``handler_delay``); ``CallResolved`` is recorded;
* one timer: the earliest of the mesh's, the registry's and the caller's deadlines.

One adaptation stands in for a missing mesh hook: the mesh closes connections no overlay needs
after ``LINGER`` (``Disconnect(peer, "idle")``), and it does not know RPC connections. A
connection with RPC traffic in the last ``RPC_PIN`` seconds (or a call or handler on it) is kept:
the ``Disconnect`` is dropped and the connection reported to the mesh again. An unpinned idle
close is reported to the caller (the mesh does not report connections it closed itself).

The scenarios (:class:`FailoverScenario`, :class:`LeaseScenario`) return
:class:`~quicmesh.testing.scenarios.Report` s whose figures the tests assert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from random import Random

from ..bounded import ContainerRegistry, TtlMap
from ..config import NodeConfig, RegistryConfig, RpcConfig
from ..core.caller import Caller, CallerOutcome
from ..core.effects import Deliver, DeliverBatch, Disconnect, Effect, Send
from ..core.mesh import Mesh
from ..core.messages import Reply, ReplyError, Request, Services
from ..core.registry import REGISTRY_PATTERN, REGISTRY_TOPIC, Broadcast, LookupDone, Registry
from ..core.registry_messages import REGISTRY_MESSAGES
from ..core.rpc import CallResolved, Invoke, Rpc
from ..core.wire import Message
from ..errors import Overloaded, RemoteError
from ..identity import KeyPair, NodeId
from .network import Latency, NetworkParams
from .scenarios import Report, build_overlay, container_peaks
from .sim import SimNode, Simulator

__all__ = [
    "RPC_PIN",
    "CallRecord",
    "FailoverScenario",
    "LeaseScenario",
    "RpcSimulator",
    "ServiceMesh",
    "run_failover",
    "run_lease",
]

RPC_PIN = 30.0
"""Seconds a connection stays pinned open after its last RPC message."""

_RPC_TYPES = (Request, Reply, ReplyError, Services)


class ServiceMesh(Mesh):
    """A mesh node with a service registry, an RPC machine and a call planner (see the module
    docstring). ``on_invoke(invoke)`` runs a handler; ``on_result(token, result, error)`` gets
    every call outcome."""

    def __init__(
        self,
        keypair: KeyPair,
        addresses: tuple[str, ...],
        config: NodeConfig,
        rng: Random,
        registry: ContainerRegistry,
        *,
        version_base: int,
        wall_offset: float = 0.0,
        on_invoke: Callable[[Invoke], None],
        on_result: Callable[[object, bytes | None, BaseException | None], None],
    ) -> None:
        super().__init__(keypair.node_id, addresses, config, rng, registry)
        cap = config.transport.max_connections
        self.services = Registry(keypair, addresses, config.registry, realm=config.realm, rng=rng,
                                 version_base=version_base, wall_offset=wall_offset, registry=registry)
        self.rpc = Rpc(self.me, config.rpc, peer_capacity=cap, rng=rng, registry=registry)
        self.caller = Caller(self.me, config.rpc, config.registry, self.rpc, self.services,
                             neighbours=self.realm.active_peers, peer_capacity=cap, rng=rng, containers=registry)
        self._rpc_used: TtlMap[NodeId, None] = TtlMap("sim.rpc_pins", cap, RPC_PIN, registry=registry)
        self._on_invoke = on_invoke
        self._on_result = on_result
        self.first_advert: bytes | None = None

    # -- API used by the scenarios ---------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """Subscribe to the registry topic (after ``join``)."""
        return self._post(self.subscribe(REGISTRY_PATTERN, now), now)

    def advertise(self, name: str, now: float, *, ttl: float | None = None) -> list[Effect]:
        """Serve ``name`` (RPC side) and advertise it realm-wide."""
        self.rpc.advertise(name)
        return self._drive(list(self.services.advertise(name, now, ttl=ttl)), now)

    def shutdown(self, now: float) -> list[Effect]:
        """Withdraw every own advertisement (publish before closing connections)."""
        for name in self.rpc.services:
            self.rpc.unadvertise(name)
        return self._drive(list(self.services.close(now)), now)

    def call(self, name: str, payload: bytes, timeout: float, now: float, token: object) -> list[Effect]:
        """Start a call; its outcome reaches ``on_result``. ``Overloaded`` is reported there too."""
        try:
            _cid, outs = self.caller.call(name, payload, timeout, now, token)
        except Overloaded as exc:
            self._on_result(token, None, exc)
            return []
        return self._drive(outs, now)

    def handler_done(self, peer: NodeId, call_id: int, result: bytes | None, error: RemoteError | None,
                     now: float) -> list[Effect]:
        """A handler started by ``Invoke`` finished."""
        self._rpc_used.set(peer, None, now)
        return self._drive(list(self.rpc.handler_done(peer, call_id, result, error)), now)

    def pending_entries(self) -> dict[str, int]:
        """Per-call state left in this node (all 0 when no call is open)."""
        return {**self.caller.pending_entries(), "handlers_running": self.rpc.running}

    # -- driver glue -----------------------------------------------------------------------------

    def _drive(self, outs: list[CallerOutcome], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for o in outs:
            if isinstance(o, Broadcast):
                if self.first_advert is None:
                    self.first_advert = o.payload
                effects += self.publish(o.topic, o.payload, now) + self.flush(now)
            elif isinstance(o, LookupDone):
                effects += self._drive(self.caller.lookup_done(o, now), now)
            elif isinstance(o, CallResolved):
                self._on_result(o.token, o.result, o.error)
            elif isinstance(o, Invoke):
                self._rpc_used.set(o.peer, None, now)
                self._on_invoke(o)
            else:
                if isinstance(o, Send) and isinstance(o.message, _RPC_TYPES):
                    self._rpc_used.set(o.peer, None, now)
                effects.append(o)
        return self._post(effects, now)

    def _post(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for e in [d for x in effects for d in (x.each() if isinstance(x, DeliverBatch) else (x,))]:
            if isinstance(e, Deliver) and e.topic == REGISTRY_TOPIC:
                out += self._drive(list(self.services.handle_advert(e.payload, now)), now)
            elif isinstance(e, Disconnect) and e.reason == "idle":
                if self._pinned(e.peer):
                    super().peer_connected(e.peer, (), False, now)  # keep it: the mesh re-lingers
                else:
                    out.append(e)
                    out += self._drive(self.caller.peer_disconnected(e.peer, now), now)
            else:
                out.append(e)
        return out

    def _pinned(self, peer: NodeId) -> bool:
        return peer in self._rpc_used or self.caller.uses(peer)

    # -- Mesh overrides --------------------------------------------------------------------------

    def peer_connected(self, peer: NodeId, addresses: tuple[str, ...], outbound: bool, now: float) -> list[Effect]:
        out = self._post(super().peer_connected(peer, addresses, outbound, now), now)
        if any(isinstance(e, Disconnect) and e.peer == peer for e in out):
            return out
        return out + self._drive(self.caller.peer_connected(peer, now), now)

    def peer_disconnected(self, peer: NodeId, now: float, *, graceful: bool = False) -> list[Effect]:
        out = self._post(super().peer_disconnected(peer, now, graceful=graceful), now)
        self._rpc_used.pop(peer)
        return out + self._drive(self.caller.peer_disconnected(peer, now), now)

    def dial_failed(self, peer: NodeId, now: float) -> list[Effect]:
        out = self._post(super().dial_failed(peer, now), now)
        return out + self._drive(self.caller.dial_failed(peer, now), now)

    def handle_message(self, peer: NodeId, msg: Message, now: float) -> list[Effect]:
        if isinstance(msg, REGISTRY_MESSAGES):
            return self._drive(list(self.services.handle_message(peer, msg, now)), now)
        if isinstance(msg, _RPC_TYPES):
            self._rpc_used.set(peer, None, now)
            return self._drive(self.caller.handle_message(peer, msg, now), now)
        return self._post(super().handle_message(peer, msg, now), now)

    def handle_timer(self, now: float) -> list[Effect]:
        self._rpc_used.expire(now)
        out = self._post(super().handle_timer(now), now)
        out += self._drive(list(self.services.handle_timer(now)), now)
        out += self._drive(self.caller.handle_timer(now), now)
        return out

    def next_deadline(self) -> float | None:
        ds = [d for d in (super().next_deadline(), self.services.next_deadline(), self.caller.next_deadline(),
                          self._rpc_used.next_deadline()) if d is not None]
        return min(ds) if ds else None


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
    """A :class:`Simulator` whose nodes are :class:`ServiceMesh` es (echo handlers)."""

    def __init__(self, seed: int, config: NodeConfig | None = None, network: NetworkParams | None = None, *,
                 handler_delay: float = 0.001, clock_skew: float = 0.0) -> None:
        self.handler_delay = handler_delay
        self.clock_skew = clock_skew
        self.calls: dict[object, CallRecord] = {}  # bounded: the scenario's call count
        super().__init__(seed, config, network, record_deliveries=False)

    def _new_mesh(self, ident: NodeId, address: str, index: int, incarnation: int,
                  registry: ContainerRegistry) -> Mesh:
        kp = KeyPair.from_seed(hashlib.sha256(f"quicmesh-sim/{self.seed}/{index}".encode()).digest())
        if kp.node_id != ident:
            raise ValueError("RpcSimulator nodes use their index as identity")
        rng = Random(f"{self.seed}/{index}/{incarnation}")
        base = int(self.now * 1e6) + 1  # versions keep increasing across restarts (a wall clock)
        skew = Random(f"skew/{self.seed}/{index}").uniform(-self.clock_skew, self.clock_skew)
        return ServiceMesh(kp, (address,), self.config, rng, registry, version_base=base, wall_offset=skew,
                           on_invoke=partial(self._invoke, index, incarnation),
                           on_result=self._result)

    @staticmethod
    def svc(node: SimNode) -> ServiceMesh:
        """``node``'s :class:`ServiceMesh`."""
        assert isinstance(node.mesh, ServiceMesh)
        return node.mesh

    def start_services(self, node: SimNode) -> None:
        self._apply(node, self.svc(node).start(self.now))

    def advertise(self, node: SimNode, name: str, ttl: float | None = None) -> None:
        self._apply(node, self.svc(node).advertise(name, self.now, ttl=ttl))

    def shutdown(self, node: SimNode) -> None:
        self._apply(node, self.svc(node).shutdown(self.now))

    def call(self, node: SimNode, name: str, payload: bytes, timeout: float, token: object) -> None:
        if not node.alive:
            return
        self.calls[token] = CallRecord(self.now, timeout, node.index)
        self._apply(node, self.svc(node).call(name, payload, timeout, self.now, token))

    def inject(self, node: SimNode, effects: list[Effect]) -> None:
        """Execute ``effects`` on behalf of ``node`` (used to replay a stale advert)."""
        self._apply(node, effects)

    def _invoke(self, index: int, incarnation: int, eff: Invoke) -> None:
        def done() -> None:
            node = self.nodes[index]
            if not node.alive or node.incarnation != incarnation:
                return
            self._apply(node, self.svc(node).handler_done(eff.peer, eff.call_id, eff.payload, None, self.now))

        self.at(self.now + self.handler_delay, done)

    def _result(self, token: object, result: bytes | None, error: BaseException | None) -> None:
        rec = self.calls.get(token)
        if rec is None or rec.end is not None:
            raise AssertionError(f"call {token!r} resolved twice or unknown")
        rec.end = self.now
        rec.ok = error is None
        rec.error = None if error is None else type(error).__name__


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
    known_before = sum(1 for n in nodes if len(sim.svc(n).services.providers("echo", sim.now)) == sc.providers)
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
    # a stale advert replayed after its provider refreshed (by another node, through the mesh)
    stale_source = providers[0]
    stale_payload = sim.svc(stale_source).first_advert
    assert stale_payload is not None
    replay_at = t0 + 0.75 * sc.lease_ttl  # after two refreshes (every ttl / 3), before it expired

    def replay() -> None:
        relay = callers[0]
        sim.inject(relay, sim.svc(relay).publish(REGISTRY_TOPIC, stale_payload, sim.now))

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
            if all(sim.svc(n).services.entry(p.id, "echo") is None for n in live_nodes):
                vanished[p.index] = sim.now - crash_at[p.index]
        for n in live_nodes:
            reg = sim.svc(n).services
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
    main_stats = [sim.svc(n).caller.stats for n in sim.nodes if n.alive]
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
    regs = [sim.svc(n).services for n in sim.nodes if n.alive]
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
            for k, v in sim.svc(n).pending_entries().items():
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
                sim.svc(n).services.entry(p.id, "svc") is None for n in others
            ):
                gone[label] = sim.now - stop_at
        for n in others:
            stay_checks += 1
            if not sim.svc(n).services.providers("svc", sim.now) or sim.svc(n).services.entry(stay.id, "svc") is None:
                stay_missing += 1

    _poll(sim, 0.25, t0 + sc.duration, check)
    sim.run_until(t0 + sc.duration)
    regs = [sim.svc(n).services for n in others]
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
