"""#13 in the network lab: a node behind a NAT router (nftables masquerade) learns its public
mapping (the router's address and the mapped port) from two public peers, and announces it.

Needs root, ``ip`` and ``nft`` (skips with one line otherwise; fails under CI, as the other lab
tests: the ``lab`` fixture of ``tests/labkit.py``). Knobs: ``QMLAB_NAT_TIMEOUT`` (seconds to wait
for the confirmation, default 30).
"""

from __future__ import annotations

import os
from typing import Any

from quicmesh.testing.lab import Lab, LabNode
from quicmesh.testing.wait import eventually

TIMEOUT = float(os.environ.get("QMLAB_NAT_TIMEOUT", "30"))


async def _addresses(node: LabNode) -> dict[str, Any]:
    ev = await node.process.request("health", "health")
    doc: dict[str, Any] = ev["health"]["addresses"]
    return doc


async def test_node_behind_nat_learns_its_public_mapping(lab: Lab) -> None:
    lab.add_lan("pub")
    lab.add_lan("priv")
    p1, p2 = lab.add_host("p1", "pub"), lab.add_host("p2", "pub")
    h = lab.add_host("h", "priv")
    lab.add_router("r", ["pub", "priv"])
    public = lab.nat("r", "priv")
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
    lab.add_lan("pub")
    lab.add_lan("priv")
    p1, p2 = lab.add_host("p1", "pub"), lab.add_host("p2", "pub")
    h = lab.add_host("h", "priv")
    lab.add_router("r", ["pub", "priv"])
    public = lab.nat("r", "priv", random_fully=True)
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
