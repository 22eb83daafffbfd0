"""Partitions and loss on a real kernel network (the lab): eight ``quicmesh node`` processes, each
in its own network namespace, on two LANs joined by a router; faults are nftables rules.

3. Partition and heal: the hosts split 4|4 (each side holding hosts of both LANs) for
   ``QMLAB_PARTITION_S`` seconds (20 in ``make test``, 120 in ``make lab``), then a one-way
   cut. During the split, RPC callers on the side without the provider get ``NoProvider`` or
   ``CallTimeout`` within their deadline (never a hang) and callers beside it get replies; after
   the heal the overlay is one connected graph again and messages cross the former cut, both
   within 30 s.
4. Loss: ``QMLAB_MESSAGES`` messages (1,000 in ``make test``, 10,000 in ``make lab``) from
   two publishers with 5 % and then 20 % of the UDP packets every host receives dropped: every
   subscriber gets every message exactly once, in each publisher's order.

Every figure is printed; the fault loops are bounded in time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import pytest
from labkit import mesh, peers

from quicmesh.testing.lab import Lab, LabNode, one_overlay

PARTITION_S = float(os.environ.get("QMLAB_PARTITION_S", "20"))
MESSAGES = int(os.environ.get("QMLAB_MESSAGES", "1000"))
HEAL_LIMIT_S = 30.0


async def _one_overlay(nodes: list[LabNode]) -> bool:
    """Whether the nodes' connections form one connected graph."""
    ids = {n.process.node_id for n in nodes}
    return one_overlay({n.process.node_id: (await peers(n)) & ids for n in nodes})


async def _count(node: LabNode, sid: int) -> int:
    return int((await node.process.request("counts", "counts"))["counts"].get(str(sid), 0))


async def _crosses(pub: LabNode, sub: LabNode, sid: int, topic: str, limit: float) -> float:
    """Seconds until a message ``pub`` publishes on ``topic`` reaches ``sub`` (bounded by ``limit``)."""
    start = time.monotonic()
    before = await _count(sub, sid)
    while time.monotonic() - start < limit:
        await pub.process.request("publish", "published", topic=topic, payload="x", count=1)
        await asyncio.sleep(0.2)
        if await _count(sub, sid) > before:
            return time.monotonic() - start
    raise AssertionError(f"no message from {pub.name} to {sub.name} within {limit:g} s")


async def _call(node: LabNode, call_id: int, timeout: float) -> tuple[str, float]:
    """One call of ``svc`` from ``node``: (outcome, seconds), outcome ``reply`` or the error type.
    The wait for an answer is bounded at 3x the call's own deadline: longer is a hang."""
    start = time.monotonic()
    await node.process.send("call", name="svc", payload="ping", timeout=timeout, id=call_id)
    async with asyncio.timeout(3 * timeout):
        while True:
            ev: dict[str, Any] = await node.process.events.get()
            if ev.get("id") != call_id:
                continue
            if ev.get("event") == "reply":
                return "reply", time.monotonic() - start
            if ev.get("event") == "error":
                return str(ev.get("type")), time.monotonic() - start


@pytest.mark.timeout(300 + PARTITION_S)
def test_partition_and_heal_reconverge_and_calls_never_hang(lab: Lab) -> None:
    async def run() -> None:
        nodes = await mesh(lab)
        side_a, side_b = nodes[:4], nodes[4:]  # each side holds hosts of both LANs
        provider = side_a[1]
        await provider.process.request("advertise", "advertised", name="svc", kind="echo")
        sub_a, sub_b = side_a[0], side_b[0]
        await sub_a.process.request("subscribe", "subscribed", pattern="x.>", id=1, quiet=True)
        await sub_b.process.request("subscribe", "subscribed", pattern="x.>", id=1, quiet=True)
        for caller in (side_a[2], side_b[1]):
            await caller.process.request("wait_provider", "ready", name="svc", wait=30)
        await _crosses(side_b[2], sub_a, 1, "x.before", 15)

        lab.partition([n.host for n in side_a], [n.host for n in side_b])
        split_at = time.monotonic()
        timeout = 2.0
        outcomes: dict[str, list[tuple[str, float]]] = {"beside": [], "across": []}
        call_id = 100
        while time.monotonic() - split_at < PARTITION_S:  # bounded by the partition's length
            call_id += 1
            outcomes["beside"].append(await _call(side_a[2], call_id, timeout))
            call_id += 1
            outcomes["across"].append(await _call(side_b[1], call_id, timeout))
        across = outcomes["across"][-5:]  # once the split is known: no reply from the far side
        assert {o for o, _ in across} <= {"NoProvider", "CallTimeout"}, across
        worst = max(s for _, s in outcomes["beside"] + outcomes["across"])
        assert worst <= timeout + 0.5, f"a call took {worst:.2f} s with a {timeout:g} s deadline"
        replies = sum(1 for o, _ in outcomes["beside"] if o == "reply")
        assert replies >= len(outcomes["beside"]) - 2, outcomes["beside"]

        b_ids = {n.process.node_id for n in side_b}
        cross_links = 0
        for n in side_a:
            cross_links += len(await peers(n) & b_ids)
        assert cross_links == 0, f"{cross_links} connections across the cut after {PARTITION_S:g} s"
        lab.heal()
        healed = time.monotonic()
        while not await _one_overlay(nodes):
            assert time.monotonic() - healed < HEAL_LIMIT_S, "no single overlay within 30 s of the heal"
            await asyncio.sleep(0.5)
        overlay_s = time.monotonic() - healed
        cross_s = max(await _crosses(side_a[3], sub_b, 1, "x.after", HEAL_LIMIT_S),
                      await _crosses(side_b[3], sub_a, 1, "x.after", HEAL_LIMIT_S))

        # one-way cut: side_b's hosts receive nothing from side_a's, the other way works
        for a in side_a:
            for b in side_b:
                lab.cut(a.host, b.host)
        await asyncio.sleep(min(5.0, PARTITION_S))  # the fault lasts a while: a bounded wait, not a sync
        lab.heal()
        cut_healed = time.monotonic()
        while not await _one_overlay(nodes):
            assert time.monotonic() - cut_healed < HEAL_LIMIT_S, "no single overlay within 30 s of the cut's heal"
            await asyncio.sleep(0.5)
        cut_s = max(await _crosses(side_a[2], sub_b, 1, "x.cut", HEAL_LIMIT_S),
                    await _crosses(side_b[2], sub_a, 1, "x.cut", HEAL_LIMIT_S))
        kinds = sorted({o for o, _ in outcomes["across"]})
        print(f"8 nodes split 4|4 for {PARTITION_S:.0f} s: {len(outcomes['across'])} calls across the cut ended "
              f"{'/'.join(kinds)}, {len(outcomes['beside'])} beside it ({replies} replies); slowest call "
              f"{worst:.2f} s (deadline {timeout:g} s), 0 connections left across it; after the heal one overlay "
              f"in {overlay_s:.1f} s and "
              f"delivery across in {cross_s:.1f} s; after a one-way cut, {cut_s:.1f} s (limit 30 s)")
        await lab.stop_nodes()

    asyncio.run(run())


async def _collect(node: LabNode, sid: int, want: int, limit: float) -> list[tuple[str, int]]:
    """(sender, seq) of the first ``want`` messages of subscription ``sid``, in arrival order."""
    got: list[tuple[str, int]] = []
    deadline = time.monotonic() + limit
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            ev = await asyncio.wait_for(node.process.events.get(), left)
        except TimeoutError:
            break
        if ev.get("event") == "message" and ev.get("id") == sid:
            got.append((str(ev["sender"]), int(ev["seq"])))
    return got


@pytest.mark.parametrize("percent", [5, 20])
@pytest.mark.timeout(240 + MESSAGES / 20)
def test_loss_every_message_once_in_order(lab: Lab, percent: int) -> None:
    async def run() -> None:
        nodes = await mesh(lab)
        pubs, subs = nodes[:2], nodes[2:]
        for s in subs:
            await s.process.request("subscribe", "subscribed", pattern="loss.>", id=7)
        for p in pubs:
            await p.process.request("wait_subscriber", "ready", topic="loss.x", wait=30)
        lab.loss(percent)
        each = MESSAGES // len(pubs)
        rate = 400.0
        start = time.monotonic()
        for i, p in enumerate(pubs):
            await p.process.send("publish", topic="loss.x", payload=f"p{i}", count=each, rate=rate)
        results = await asyncio.gather(*(_collect(s, 7, each * len(pubs), each / rate + 60) for s in subs))
        took = time.monotonic() - start
        lab.heal()
        lost = dups = disorder = 0
        for got in results:
            per: dict[str, list[int]] = {}
            for sender, seq in got:
                per.setdefault(sender, []).append(seq)
            dups += len(got) - len(set(got))
            lost += each * len(pubs) - len(set(got))
            disorder += sum(1 for seqs in per.values() for x, y in itertools.pairwise(seqs) if y <= x)
        total = each * len(pubs) * len(subs)
        print(f"{percent} % loss on every host, {each * len(pubs):,} messages from 2 publishers to {len(subs)} "
              f"subscribers ({total:,} deliveries) in {took:.1f} s: lost {lost}, duplicates {dups}, "
              f"out of order {disorder}")
        assert (lost, dups, disorder) == (0, 0, 0)
        await lab.stop_nodes()

    asyncio.run(run())
