"""A Jepsen-style set test on replicated logs and maps in the lab (issue #12, scenario 5).

Five ``quicmesh node`` processes (each with its own SQLite store, in its own network namespace,
on two LANs joined by a router) append unique items to one replicated log and set unique keys of
one replicated map, one operation at a time each (at most ``OPS_PER_S`` per second), while a
fault loop injects one fault every ``QMLAB_FAULT_EVERY_S`` seconds (5 s), cycling through:
``kill -9`` of a random node and
its restart on the same store, a partition of the hosts into random halves, a pause (SIGSTOP) of
a random node. The run lasts ``QMLAB_JEPSEN_S`` seconds (30 in ``make test``, 300 in ``make
lab``). An operation counts as *acknowledged* when the node's control channel reported it done
(the log append durable, the map set applied); operations cut short by a kill are unknown.

After the faults stop and the network heals, every replica is read: acknowledged but lost = 0;
every replica has the same head per author (one head per log); each author's chain is the same
contiguous run of entries on every replica (the store verified every entry's signature and link
on ingest); every replica's map is identical and holds every acknowledged key.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from quicmesh.testing.lab import Lab, LabNode

RUN_S = float(os.environ.get("QMLAB_JEPSEN_S", "30"))
FAULT_EVERY_S = float(os.environ.get("QMLAB_FAULT_EVERY_S", "5"))
OPS_PER_S = 20.0
"""Operations (an append and a set) per second per node, at most."""
CONVERGE_S = 60.0
LOG, MAP = "set", "kv"


class Cluster:
    """The nodes by name (a restart replaces one) and what each acknowledged."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nodes: dict[str, LabNode] = {}  # bounded: five lab nodes
        self.ids: dict[str, str] = {}  # bounded: five lab nodes
        self.acked_items: dict[str, dict[int, str]] = {}  # bounded: one run's acknowledged operations
        self.acked_keys: dict[str, str] = {}  # bounded: one run's acknowledged operations
        self.unknown = 0
        self.faults: list[str] = []  # bounded: one fault per FAULT_EVERY_S of one run
        self.stop = False

    async def start(self, n: int = 5) -> None:
        self.lab.add_lan("a")
        self.lab.add_lan("b")
        hosts = [self.lab.add_host(f"h{i}", "a" if i % 2 == 0 else "b") for i in range(n)]
        self.lab.add_router("r", ["a", "b"])
        for i, h in enumerate(hosts):
            name = f"n{i}"
            boot = [self.nodes["n0"].address] if i else []
            node = await self.lab.spawn(h, name, bootstrap=boot, extra=("--data-dir", str(self.lab.dir / name)))
            await self._open(node)
            self.nodes[name] = node
            self.ids[name] = node.process.node_id
            self.acked_items[name] = {}
        for node in self.nodes.values():
            await node.process.wait_peers(2, timeout=30)

    @staticmethod
    async def _open(node: LabNode) -> None:
        # a restarted node reads its store first (thousands of operations after a long run)
        await node.process.request("log_open", "log_opened", wait=60, log=LOG)
        await node.process.request("kv_open", "kv_opened", wait=60, map=MAP)

    async def writer(self, name: str) -> None:
        """Append unique items and set unique keys, one at a time, until told to stop."""
        k = 0
        while not self.stop:
            node = self.nodes[name]
            k += 1
            item = f"{name}-{k}"
            try:
                ev = await node.process.request("append", "appended", wait=15, log=LOG, payload=item)
                self.acked_items[name][int(ev["last_seq"])] = item
                await node.process.request("kv_set", "kv_set", wait=15, map=MAP, key=item, payload=item)
                self.acked_keys[item] = item
                await asyncio.sleep(1 / OPS_PER_S)  # paced: a set test needs faults, not volume
            except (RuntimeError, TimeoutError, ConnectionError, BrokenPipeError):
                self.unknown += 1  # killed mid-operation: its outcome is unknown, not acknowledged
                while self.nodes[name] is node and not self.stop:  # wait for the restart (bounded by the run)
                    await asyncio.sleep(0.1)

    async def faults_loop(self, rng: random.Random) -> None:
        """One fault every FAULT_EVERY_S seconds, cycling kill/restart, partition, pause."""
        end = time.monotonic() + RUN_S
        kinds = ["kill", "partition", "pause"]
        i = 0
        while time.monotonic() < end:
            kind = kinds[i % len(kinds)]
            i += 1
            names = sorted(self.nodes)
            if kind == "kill":
                victim = rng.choice(names)
                self.nodes[victim].kill()
                restarted = await self.lab.restart(self.nodes[victim], bootstrap=[
                    self.nodes[n].address for n in names if n != victim][:2])
                await self._open(restarted)
                self.nodes[victim] = restarted
                self.faults.append(f"kill -9 {victim}")
                await asyncio.sleep(FAULT_EVERY_S)
            elif kind == "partition":
                rng.shuffle(names)
                half = len(names) // 2
                self.lab.partition([self.nodes[n].host for n in names[:half]],
                                   [self.nodes[n].host for n in names[half:]])
                self.faults.append(f"partition {sorted(names[:half])}|{sorted(names[half:])}")
                await asyncio.sleep(FAULT_EVERY_S)
                self.lab.heal()
            else:
                victim = rng.choice(names)
                self.nodes[victim].pause()
                self.faults.append(f"pause {victim}")
                await asyncio.sleep(min(3.0, FAULT_EVERY_S))
                self.nodes[victim].resume()
                await asyncio.sleep(max(0.0, FAULT_EVERY_S - 3.0))
        self.lab.heal()
        self.stop = True


async def _state(node: LabNode, authors: dict[str, str]) -> tuple[dict[str, int], dict[str, list[tuple[int, str]]],
                                                                    dict[str, str]]:
    heads = (await node.process.request("log_heads", "log_heads", log=LOG))["heads"]
    chains: dict[str, list[tuple[int, str]]] = {}
    for name, author in authors.items():
        entries: list[tuple[int, str]] = []
        start = 0
        while True:  # bounded: pages of 256 up to the author's head
            ev = await node.process.request("log_read", "log_entries", log=LOG,
                                            author=author, **{"from": start, "limit": 256})
            page = [(int(e["seq"]), str(e.get("payload", ""))) for e in ev["entries"]]
            entries += page
            if len(page) < 256:
                break
            start = page[-1][0] + 1
        chains[name] = entries
    items = (await node.process.request("kv_items", "kv_items", map=MAP))["items"]
    return {str(a): int(s) for a, s in heads.items()}, chains, {str(k): str(v) for k, v in items.items()}


@pytest.mark.timeout(300 + RUN_S)
def test_set_test_acknowledged_writes_survive_faults(lab: Lab) -> None:
    async def run() -> None:
        cluster = Cluster(lab)
        await cluster.start()
        rng = random.Random(12)
        writers = [asyncio.ensure_future(cluster.writer(n)) for n in sorted(cluster.nodes)]
        await cluster.faults_loop(rng)
        await asyncio.wait_for(asyncio.gather(*writers), 30)

        # converge: every replica holds every acknowledged item and key, bounded in time
        healed = time.monotonic()
        acked_total = sum(len(v) for v in cluster.acked_items.values())
        while True:
            states = [await _state(node, cluster.ids) for node in cluster.nodes.values()]
            lost = 0
            for _heads, chains, items in states:
                for name, acked in cluster.acked_items.items():
                    have = dict(chains[name])
                    lost += sum(1 for seq, item in acked.items() if have.get(seq) != item)
                lost += sum(1 for k in cluster.acked_keys if k not in items)
            same = all(s == states[0] for s in states)
            if (lost == 0 and same) or time.monotonic() - healed > CONVERGE_S:
                break
            await asyncio.sleep(1.0)
        converge_s = time.monotonic() - healed
        heads0, chains0, _items = states[0]
        for name, chain in chains0.items():
            seqs = [s for s, _ in chain]
            assert not seqs or seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{name}: gaps in {seqs}"
            assert len({item for _, item in chain}) == len(chain), f"{name}: an item twice in one chain"
        print(f"set test, 5 nodes, {RUN_S:.0f} s of faults every {FAULT_EVERY_S:g} s ({len(cluster.faults)}: "
              f"{', '.join(cluster.faults)}): {acked_total} log items and {len(cluster.acked_keys)} map keys "
              f"acknowledged, {cluster.unknown} operations cut short; after the heal, acknowledged but lost = {lost}, "
              f"replicas identical = {same} (heads per author {sorted(heads0.values())}) in {converge_s:.1f} s")
        assert acked_total > 0 and cluster.acked_keys
        assert lost == 0
        assert same, "replicas differ after the heal"
        for name, acked in cluster.acked_items.items():
            if acked:
                assert heads0[cluster.ids[name]] >= max(acked), f"{name}: head below an acknowledged seq"
        await lab.stop_nodes()

    asyncio.run(run())
