"""NodeCore: one composition of the state machines, the same for the runtime and the simulator."""

from __future__ import annotations

import typing
from random import Random

import pytest

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import NodeConfig
from quicmesh.core import events
from quicmesh.core.events import (
    Advertise,
    Flush,
    Join,
    MessageReceived,
    PeerConnected,
    Publish,
    StartCall,
    StateChanged,
    Subscribe,
)
from quicmesh.core.mesh import LINGER
from quicmesh.core.messages import Request
from quicmesh.core.node import RPC_PIN, NodeCore
from quicmesh.core.registry import REGISTRY_TOPIC
from quicmesh.core.rpc import Invoke
from quicmesh.identity import KeyPair
from quicmesh.testing.network import Latency, NetworkParams
from quicmesh.testing.scenarios import build_overlay
from quicmesh.testing.sim import Simulator


def _core(seed: int = 1) -> NodeCore:
    return NodeCore(KeyPair.from_seed(bytes([seed]) * 32), NodeConfig(), Random(seed), ContainerRegistry("t"),
                    addresses=("mem:1",))


def test_every_event_type_has_a_handler_and_anything_else_is_refused() -> None:
    core = _core()
    other = KeyPair.from_seed(b"\x02" * 32).node_id
    samples: dict[type, object] = {
        events.PeerConnected: PeerConnected(other, ("mem:2",), True),
        events.PeerDisconnected: events.PeerDisconnected(other),
        events.DialFailed: events.DialFailed(other, ("mem:2",)),
        events.MessageReceived: MessageReceived(other, Request(1, "nope", b"", 1000)),
        events.TimerFired: events.TimerFired(),
        events.Reconcile: events.Reconcile(frozenset()),
        events.Join: Join(((None, ("mem:3",)),)),
        events.Subscribe: Subscribe("a.>"),
        events.Unsubscribe: events.Unsubscribe("a.>"),
        events.JoinTopic: events.JoinTopic("b.x"),
        events.Publish: Publish("a.b", b"x"),
        events.Flush: Flush(),
        events.Advertise: Advertise("echo"),
        events.Unadvertise: events.Unadvertise("echo"),
        events.StartCall: StartCall("echo2", b"", 1.0, object()),
        events.CancelCall: events.CancelCall(1),
        events.HandlerDone: events.HandlerDone(other, 1),
        events.Lookup: events.Lookup("echo"),
        events.AddPeer: events.AddPeer(other, ("mem:2",)),
        events.RemovePeer: events.RemovePeer(other),
        events.Shutdown: events.Shutdown(),
        events.AcquireLog: events.AcquireLog("l"),
        events.AppendLog: events.AppendLog("l", b"x", 1_000_000),
        events.StoreDone: events.StoreDone(99, None),
        events.ReleaseLog: events.ReleaseLog("l"),
    }
    assert set(samples) == set(typing.get_args(events.Event))  # every input type is exercised
    for event in samples.values():
        out = core.handle(event, 1.0)  # type: ignore[arg-type]
        assert isinstance(out, list)
    with pytest.raises(TypeError, match="not a NodeCore event"):
        core.handle("hello", 1.0)  # type: ignore[arg-type]


def test_a_request_for_an_advertised_name_becomes_one_invoke_and_a_repeat_is_dropped() -> None:
    core = _core()
    peer = KeyPair.from_seed(b"\x03" * 32).node_id
    core.handle(Advertise("echo"), 0.0)
    core.handle(PeerConnected(peer, ("mem:3",), True), 0.0)
    first = core.handle(MessageReceived(peer, Request(7, "echo", b"hi", 1000)), 0.1)
    again = core.handle(MessageReceived(peer, Request(7, "echo", b"hi", 1000)), 0.2)
    assert [type(e) for e in first if isinstance(e, Invoke)] == [Invoke]
    assert not [e for e in again if isinstance(e, Invoke)]  # same call id while its handler runs
    assert core.rpc.running == 1 and core.in_use(peer, 0.2)
    done = core.handler_done(peer, 7, b"hi", None, 0.3)
    assert core.rpc.running == 0 and len(done) == 1  # one reply
    assert core.handler_done(peer, 7, b"hi", None, 0.4) == []  # a second report sends nothing


def test_registry_adverts_are_consumed_by_the_core_and_reach_every_registry() -> None:
    sim = Simulator(5, NodeConfig(), NetworkParams(latency=Latency(median=0.01)), services=True)
    nodes = build_overlay(sim, 12)
    sim.run_for(5.0)
    sim.advertise(nodes[4], "echo")
    sim.run_for(3.0)
    for n in nodes:
        assert [e.provider for e in n.core.services.providers("echo", sim.now)] == [nodes[4].id], n.index
        assert not [d for d in n.deliveries if d.topic == REGISTRY_TOPIC]  # never handed to the driver


def test_state_changed_is_reported_for_membership_changes() -> None:
    core = _core()
    peer = KeyPair.from_seed(b"\x04" * 32).node_id
    out = core.handle(PeerConnected(peer, ("mem:4",), True), 0.0)
    assert any(isinstance(e, StateChanged) for e in out)


def _rpc_pin_run(seed: int) -> tuple[bool, bool]:
    """One run of the pin scenario below: whether the caller-provider connection is open at the
    end, and whether an overlay (the realm's or a swarm's, as the mesh counts one when deciding
    whether a connection lingers) holds the pair then."""
    sim = Simulator(seed, NodeConfig(), NetworkParams(latency=Latency(median=0.01)), services=True)
    nodes = build_overlay(sim, 30)
    sim.run_for(10.0)
    provider = nodes[20]
    sim.advertise(provider, "echo")
    sim.run_for(3.0)
    caller = next(n for n in nodes[3:] if n is not provider and not provider.mesh.realm.knows(n.id)
                  and not n.mesh.realm.knows(provider.id))
    results: list[bool] = []

    sim.on_resolved = lambda node, outcome: results.append(outcome.error is None)  # type: ignore[method-assign]
    sim.call(caller, "echo", b"ping", 5.0, "c1")
    sim.run_for(1.0)
    assert results == [True]
    pair = frozenset((caller.index, provider.index))
    assert pair in sim.conns
    t_call = sim.now
    sim.run_until(t_call + RPC_PIN - 2)
    assert pair in sim.conns  # pinned: the overlays do not need it, RPC used it recently
    sim.run_until(t_call + RPC_PIN + LINGER + 2)
    held = provider.mesh.links.needed_by_overlays(caller.id) or caller.mesh.links.needed_by_overlays(provider.id)
    return pair in sim.conns, held


def test_a_connection_used_by_rpc_is_pinned_then_closed_once_unused() -> None:
    """The mesh closes connections no overlay needs after LINGER s; the core keeps one that RPC
    used within RPC_PIN s, then lets it close. Figures: open at +RPC_PIN-1 s, closed by
    +RPC_PIN+LINGER+2 s unless an overlay took the peer as a neighbour meanwhile. Which pairs an
    overlay links later depends on the seed (with seed 7 the service swarm linked the two once
    HyParView's priorities changed), so seeds are tried until one shows the close: every run must
    hold the rule, and one of the five must close the connection."""
    for seed in (7, 8, 9, 10, 11):
        is_open, held = _rpc_pin_run(seed)
        assert not is_open or held, f"seed {seed}: still open with no overlay holding the pair"
        if not is_open:
            print(f"seed {seed}: the pinned connection closed once unused")
            return
    raise AssertionError("no seed of five left the pair to the pin alone")
