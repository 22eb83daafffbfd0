"""#13 in the network lab: a node behind a NAT router (nftables masquerade) learns its public
mapping (the router's address and the mapped port) from two public peers, and announces it.

Needs root, ``ip`` and ``nft`` (skips with one line otherwise; fails under CI, as the other lab
tests: the ``lab`` fixture of ``tests/labkit.py``). Knobs: ``QMLAB_NAT_TIMEOUT`` (seconds to wait
for the confirmation, default 30).
"""

from __future__ import annotations

import os
import time
from typing import Any

from quicmesh.testing.lab import Host, Lab, LabNode
from quicmesh.testing.wait import eventually

TIMEOUT = float(os.environ.get("QMLAB_NAT_TIMEOUT", "30"))


async def _addresses(node: LabNode) -> dict[str, Any]:
    ev = await node.process.request("health", "health")
    doc: dict[str, Any] = ev["health"]["addresses"]
    return doc


def _topology(lab: Lab, *, random_fully: bool = False) -> tuple[Host, Host, Host, str]:
    """Public hosts p1 and p2; h on a private LAN behind router r's NAT. Returns them and the
    router's public address."""
    lab.add_lan("pub")
    lab.add_lan("priv")
    p1, p2 = lab.add_host("p1", "pub"), lab.add_host("p2", "pub")
    h = lab.add_host("h", "priv")
    lab.add_router("r", ["pub", "priv"])
    return p1, p2, h, lab.nat("r", "priv", random_fully=random_fully)


async def test_node_behind_nat_learns_its_public_mapping(lab: Lab) -> None:
    p1, p2, h, public = _topology(lab)
    try:
        n1 = await lab.spawn(p1, "p1")
        n2 = await lab.spawn(p2, "p2", bootstrap=[n1.address])
        nh = await lab.spawn(h, "h", bootstrap=[n1.address, n2.address])

        def confirmed(doc: dict[str, Any]) -> list[dict[str, Any]]:
            return [o for o in doc["observed"] if o["confirmed"] and o["address"].startswith(f"{public}:")]

        doc = await eventually(lambda: _addresses(nh), until=confirmed, timeout=TIMEOUT,
                               what="the NATed node confirms its public mapping")
        (mapping,) = confirmed(doc)
        print(f"node behind NAT listens on {nh.address}; peers see it at {mapping['address']} "
              f"({mapping['reporters']} peers agree); it announces {doc['announced']}")
        assert mapping["reporters"] >= 2
        assert mapping["address"] in doc["announced"] and nh.address in doc["announced"]
        # the public peers were reached from the router's address, never the private one
        for n in (n1, n2):
            d = await _addresses(n)
            assert not any(o["address"].startswith("10.2.") for o in d["observed"])
    finally:
        await lab.stop_nodes()


async def test_port_randomising_nat_confirms_no_mapping(lab: Lab) -> None:
    """``masquerade random-fully``: each peer sees another port, so no mapping is ever confirmed
    and the node announces no public address it cannot be reached at."""
    p1, p2, h, public = _topology(lab, random_fully=True)
    try:
        n1 = await lab.spawn(p1, "p1")
        n2 = await lab.spawn(p2, "p2", bootstrap=[n1.address])
        nh = await lab.spawn(h, "h", bootstrap=[n1.address, n2.address])

        def mapped(doc: dict[str, Any]) -> list[dict[str, Any]]:
            return [o for o in doc["observed"] if o["address"].startswith(f"{public}:")]

        doc = await eventually(lambda: _addresses(nh), until=lambda d: sum(o["reporters"] for o in mapped(d)) >= 2,
                               timeout=TIMEOUT, what="both public peers reported the NATed node")
        print(f"random-fully NAT: peers see {nh.address} at {[o['address'] for o in mapped(doc)]}; "
              f"confirmed {[o['address'] for o in mapped(doc) if o['confirmed']]}; announces {doc['announced']}")
        assert len(mapped(doc)) == 2 and not any(o["confirmed"] for o in mapped(doc))
        assert doc["announced"] == [nh.address]
    finally:
        await lab.stop_nodes()


async def _health(node: LabNode) -> dict[str, Any]:
    ev = await node.process.request("health", "health")
    doc: dict[str, Any] = ev["health"]
    return doc


async def test_nated_node_whose_first_dial_failed_tops_up_its_view(lab: Lab) -> None:
    """A NATed node whose first dial to one of its two bootstrap contacts fails (here: the
    contact's answers are dropped until the node is linked to the other one) must still reach
    it: the contact cannot invite the node through its NAT, and a thin view (one active peer, no
    passive one) has nothing to refill from, so the node asks its unlinked bootstrap contact for
    a link (``core/discovery.py``, the top-up). Without it the node stayed with one peer, and its
    mapping, which needs two reporters, was never confirmed (CI on 65954ff)."""
    p1, p2, h, public = _topology(lab)
    try:
        n1 = await lab.spawn(p1, "p1")
        n2 = await lab.spawn(p2, "p2", bootstrap=[n1.address])
        lab.cut(p2, h)
        nh = await lab.spawn(h, "h", bootstrap=[n1.address, n2.address])

        def settled(doc: dict[str, Any]) -> bool:
            """Linked to p1 only, and the dial to p2 given up."""
            q = doc["connections"]["quic"]
            return bool(doc["membership"]["active"] == 1 and doc["connections"]["open"] == 1
                        and q["dials"] == 0 and q["handshakes"] == 0)

        await eventually(lambda: _health(nh), until=settled, timeout=TIMEOUT,
                         what="h linked to p1 and its dial to p2 failed")
        healed = time.monotonic()
        lab.heal()

        def confirmed(doc: dict[str, Any]) -> list[dict[str, Any]]:
            return [o for o in doc["addresses"]["observed"]
                    if o["confirmed"] and o["address"].startswith(f"{public}:")]

        doc = await eventually(lambda: _health(nh), until=lambda d: confirmed(d) and d["membership"]["active"] == 2,
                               timeout=TIMEOUT, what="h linked to p2 too and its mapping confirmed")
        m, (mapping,) = doc["membership"], confirmed(doc)
        print(f"h's first dial to p2 failed; {time.monotonic() - healed:.1f} s after the cut healed h has "
              f"{m['active']} active peers after {m['top_ups_total']} top-ups; mapping {mapping['address']} "
              f"confirmed by {mapping['reporters']} peers")
        assert m["top_ups_total"] >= 1 and mapping["reporters"] >= 2
    finally:
        await lab.stop_nodes()
