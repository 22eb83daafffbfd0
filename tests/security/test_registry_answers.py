"""Lookup answers (``RAnswer``) are relayed claims too (#11): an answer holding a forged, unsigned
or unpermitted advert is an offence of the neighbour that sent it, counted by the guard as gossip
is; repeated offences disconnect and block it. An advert whose provider's certificate was revoked
since (the neighbour may not know yet) is refused without penalty.

Real node cores in the simulator, in an authority realm; the adversary injects answers to real
lookups as a neighbour that was asked."""

from __future__ import annotations

from collections.abc import Callable

from quicmesh.config import NodeConfig
from quicmesh.core.effects import Disconnect
from quicmesh.core.permissions import Permissions
from quicmesh.core.registry_messages import RAdvert, RAnswer, advert_signing_bytes
from quicmesh.core.trust import Authority, Trust
from quicmesh.identity import KeyPair, NodeId
from quicmesh.testing.network import Latency, NetworkParams
from quicmesh.testing.report import build_overlay
from quicmesh.testing.sim import SimNode, Simulator, node_keypair

FULL = ("publish:>", "subscribe:>", "advertise:>", "call:>", "log:>")
NO_ADVERTISE = ("publish:>", "subscribe:>", "call:>", "log:>")
SEED = 31


def _sim() -> tuple[Simulator, list[SimNode], Authority]:
    authority = Authority.create("answers", KeyPair.from_seed(b"Z" * 32))

    def trust(index: int, node: NodeId) -> Trust:
        rules = NO_ADVERTISE if index == 3 else FULL
        cert = authority.admit(node, Permissions.parse(rules), not_before=0, not_after=2**40, serial=index + 1)
        return Trust(authority.realm, certificate=cert)

    sim = Simulator(SEED, NodeConfig(), NetworkParams(latency=Latency(median=0.01)), services=True, trust=trust)
    nodes = build_overlay(sim, 6)
    sim.run_for(5.0)
    return sim, nodes, authority


def _advert(sim: Simulator, signer: SimNode, provider: SimNode, name: str, *, sign: bool = True) -> RAdvert:
    """An advert of ``name`` naming ``provider``, signed by ``signer``'s key (or not at all)."""
    ad = RAdvert(p=provider.id.raw, a=[provider.address], n=name, m=b"", v=10**12, i=int(sim.now * 1000), l=60_000,
                 w=False, g=b"\0" * 64, c=provider.core.trust.own_certificate)
    if sign:
        ad.g = node_keypair(SEED, signer.index).sign(advert_signing_bytes(signer.core.trust.wire_id, ad))
    return ad


def _ask(sim: Simulator, asker: SimNode, name: str) -> tuple[int, list[NodeId]]:
    """Start a real lookup of ``name`` at ``asker``: its id and the neighbours asked."""
    sim._apply(asker, asker.core.lookup(name, sim.now))
    lk = asker.core.services._lookups.get(name)
    assert lk is not None
    return lk.rid, list(lk.asked)


def test_answers_with_forged_unsigned_or_unpermitted_adverts_are_offences_of_the_answerer() -> None:
    sim, nodes, _ = _sim()
    asker, honest, unpermitted = nodes[0], nodes[2], nodes[3]
    offences0 = asker.core.guard.counters["offences"]
    forged: dict[str, Callable[[str], RAdvert]] = {
        "unsigned": lambda n: _advert(sim, honest, honest, n, sign=False),
        "forged provider": lambda n: _advert(sim, nodes[4], honest, n),  # signed by another key
        "no advertise permission": lambda n: _advert(sim, unpermitted, unpermitted, n),
    }
    answerer: NodeId | None = None
    kicked: list[object] = []
    listed = 0
    for i, (what, make) in enumerate(forged.items()):
        name = f"svc{i}"
        rid, asked = _ask(sim, asker, name)
        answerer = answerer if answerer in asked else asked[0]
        out = sim.receive(asker, answerer, RAnswer(rid, name, [make(name)], [30_000]))
        kicked += [e for e in out if isinstance(e, Disconnect) and e.peer == answerer]
        listed += len(asker.core.services.providers(name, sim.now))
        print(f"\nanswer with a {what} advert: offences {asker.core.guard.counters['offences'] - offences0}")
    assert answerer is not None
    counted = asker.core.guard.counters["offences"] - offences0
    blocked = asker.core.blocked(answerer, sim.now)
    print(f"{counted} of 3 answers holding a forged, unsigned or unpermitted advert counted as offences of the "
          f"answering neighbour; {listed} listed as providers; answerer blocked: {blocked}")
    assert counted == 3 and listed == 0 and blocked and len(kicked) == 1
    assert kicked[0].reason == "misbehaving"  # type: ignore[attr-defined]
    assert asker.core.services.counters["faulty_answers"] == 3


def test_honest_answers_and_adverts_revoked_since_cost_the_answerer_nothing() -> None:
    sim, nodes, authority = _sim()
    asker, provider, other = nodes[0], nodes[2], nodes[4]
    offences0 = asker.core.guard.counters["offences"]
    rid, asked = _ask(sim, asker, "echo")
    sim.receive(asker, asked[0], RAnswer(rid, "echo", [_advert(sim, provider, provider, "echo")], [30_000]))
    assert [e.provider for e in asker.core.services.providers("echo", sim.now)] == [provider.id]
    # the provider of "other" is revoked; the asker knows, the answering neighbour may not yet
    asker.core.trust.apply_revocations(authority.revoke(None, now=1, subjects=(other.id,)))
    rid, asked = _ask(sim, asker, "other")
    sim.receive(asker, asked[0], RAnswer(rid, "other", [_advert(sim, other, other, "other")], [30_000]))
    offences = asker.core.guard.counters["offences"] - offences0
    print(f"\nhonest answer accepted; answer with a revoked provider's advert refused; offences: {offences}")
    assert offences == 0 and not asker.core.services.providers("other", sim.now)
    assert asker.core.services.counters["faulty_answers"] == 0
