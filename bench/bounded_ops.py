#!/usr/bin/env python3
"""Operations per second of the bounded containers at 1,000 and 1,000,000 entries.

Shows that set / get / evict / expire are O(1) amortised: the ``flat`` column is ops/s at 1M
divided by ops/s at 1k (1.0 = no slowdown with size; cache misses alone cost some at 1M). The
``vs bare`` column compares with the bare stdlib structure doing the same job without limits,
statistics or callbacks (dict, OrderedDict, deque), in the same run, as a ratio.

Operations, each on a container already filled to capacity:

* ``set-new``  insert a new key into a full container: one eviction per insert (``evict``),
* ``set-old``  replace a present key (TTL maps: refresh its deadline),
* ``get``      read a present key,
* ``expire``   TTL containers: ``expire(now)`` with ``now`` advancing so that each call removes
  ~100 entries; ops/s counts removed entries,
* ``append`` / ``popleft`` for the deque and queue,
* ``set-new+del`` / ``add-new+discard`` for ``BoundedDict`` / ``BoundedSet`` (filled to one below
  capacity: a new key is accepted, then removed), and their C-speed ``get`` / ``contains``.

Bounded in time: every measurement stops after ``--budget`` seconds (default 0.2) or ``--ops``
operations, whichever comes first, and is run ``--repeat`` times (default 3, interleaved with the
bare baseline; the median is shown). The whole script takes about a minute on 2 cores.
Writes ``bench/results/bounded_ops.json``.

Usage: python bench/bounded_ops.py [--sizes 1000,1000000] [--budget 0.2] [--ops 300000] [--repeat 3]
       [--only BoundedDeque,BoundedQueue]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quicmesh.bounded import (
    BoundedDeque,
    BoundedDict,
    BoundedSet,
    ContainerRegistry,
    LruMap,
    Overflow,
    TtlMap,
    TtlSet,
)
from quicmesh.bounded.aio import BoundedQueue

RESULTS = Path(__file__).resolve().parent / "results" / "bounded_ops.json"
BATCH = 1000

# An operation factory takes the container size and returns (step(i) -> None, teardown); step is
# called with i = 0, 1, 2, ... and performs one operation.
Step = Callable[[int], None]


def measure(step: Step, budget: float, max_ops: int) -> float:
    """Ops/s of ``step`` over at most ``budget`` seconds or ``max_ops`` calls (in batches).

    The cyclic garbage collector is off while timing, as ``timeit`` does: a full collection
    scans every object of the process (here millions of entries of the bare baselines too), so
    it would measure the process's size and chance, not the container's work.
    """
    gc.collect()
    gc.disable()
    try:
        done = 0
        start = time.perf_counter()
        deadline = start + budget
        while done < max_ops:
            for i in range(done, done + BATCH):
                step(i)
            done += BATCH
            if time.perf_counter() >= deadline:
                break
        return done / (time.perf_counter() - start)
    finally:
        gc.enable()


def _registry() -> ContainerRegistry:
    return ContainerRegistry("bench")


# -- the cases: (container, operation) -> (quicmesh step, bare step), both on a full container ----


def lru_cases(n: int) -> dict[str, tuple[Step, Step]]:
    m: LruMap[int, int] = LruMap("bench.lru", n, registry=_registry())
    bare: OrderedDict[int, int] = OrderedDict()
    for i in range(n):
        m.set(i, i)
        bare[i] = i
    nxt = [n, n]

    def set_new(_: int) -> None:
        m.set(nxt[0], 0)
        nxt[0] += 1

    def bare_set_new(_: int) -> None:
        bare[nxt[1]] = 0
        nxt[1] += 1
        if len(bare) > n:
            bare.popitem(last=False)

    def set_old(i: int) -> None:
        m.set(nxt[0] - 1 - (i * 7919) % n, i)

    def bare_set_old(i: int) -> None:
        k = nxt[1] - 1 - (i * 7919) % n
        bare[k] = i
        bare.move_to_end(k)

    def get(i: int) -> None:
        m.get(nxt[0] - 1 - (i * 7919) % n)

    def bare_get(i: int) -> None:
        k = nxt[1] - 1 - (i * 7919) % n
        bare.get(k)
        bare.move_to_end(k)

    return {"set-new (evict)": (set_new, bare_set_new), "set-old": (set_old, bare_set_old), "get": (get, bare_get)}


def ttl_cases(n: int) -> dict[str, tuple[Step, Step]]:
    m: TtlMap[int, int] = TtlMap("bench.ttl", n, 1e12, registry=_registry())
    bare: OrderedDict[int, tuple[int, float]] = OrderedDict()
    for i in range(n):
        m.set(i, i, now=float(i))
        bare[i] = (i, float(i))
    nxt = [n, n]
    # bare: an OrderedDict of (value, deadline) without a heap: it evicts the first key (insertion
    # order), which is what a TTL map reduces to when all TTLs are equal. (A plain dict would be
    # unfair: next(iter(d)) after many deletions at the front scans the dead slots.)

    def set_new(_: int) -> None:
        k = nxt[0]
        m.set(k, 0, now=float(k))
        nxt[0] += 1

    def bare_set_new(_: int) -> None:
        k = nxt[1]
        bare[k] = (0, float(k))
        nxt[1] += 1
        if len(bare) > n:
            bare.popitem(last=False)

    def set_old(i: int) -> None:
        m.set(nxt[0] - 1 - (i * 7919) % n, i, now=float(nxt[0] + i))

    def bare_set_old(i: int) -> None:
        k = nxt[1] - 1 - (i * 7919) % n
        bare[k] = (i, float(nxt[1] + i))
        bare.move_to_end(k)

    def get(i: int) -> None:
        m.get(nxt[0] - 1 - (i * 7919) % n)

    def bare_get(i: int) -> None:
        bare.get(nxt[1] - 1 - (i * 7919) % n)

    return {"set-new (evict)": (set_new, bare_set_new), "set-old": (set_old, bare_set_old), "get": (get, bare_get)}


def ttl_expire_case(n: int, budget: float, max_ops: int) -> tuple[float, float]:
    """Entries removed per second by ``expire(now)``, ~100 per call, against a bare baseline
    (popping the oldest keys of an OrderedDict whose deadlines ascend)."""
    m: TtlMap[int, int] = TtlMap("bench.ttl_expire", n, 1.0, registry=_registry())
    for i in range(n):
        m.set(i, i, now=float(i) / 100.0)  # deadlines 1.00, 1.01, ...: 100 expire per 1.0 of time
    bare: OrderedDict[int, float] = OrderedDict((i, 1.0 + i / 100.0) for i in range(n))
    limit = min(max_ops, n)

    def run(expire: Callable[[float], int]) -> float:
        gc.collect()
        gc.disable()  # as in measure()
        try:
            removed = 0
            now = 1.0
            start = time.perf_counter()
            deadline = start + budget
            while removed < limit and time.perf_counter() < deadline:
                for _ in range(10):
                    removed += expire(now)
                    now += 1.0
            return removed / (time.perf_counter() - start)
        finally:
            gc.enable()

    def ours(now: float) -> int:
        return len(m.expire(now))

    def base(now: float) -> int:
        out = 0
        while bare:
            k = next(iter(bare))
            if bare[k] > now:
                break
            bare.popitem(last=False)
            out += 1
        return out

    return run(ours), run(base)


def ttlset_cases(n: int) -> dict[str, tuple[Step, Step]]:
    s: TtlSet[int] = TtlSet("bench.ttl_set", n, 1e12, registry=_registry())
    bare: OrderedDict[int, float] = OrderedDict()
    for i in range(n):
        s.add(i, now=float(i))
        bare[i] = float(i)
    nxt = [n, n]

    def add_new(_: int) -> None:
        s.add(nxt[0], now=float(nxt[0]))
        nxt[0] += 1

    def bare_add_new(_: int) -> None:
        bare[nxt[1]] = float(nxt[1])
        nxt[1] += 1
        if len(bare) > n:
            bare.popitem(last=False)

    def contains(i: int) -> None:
        _ = (nxt[0] - 1 - (i * 7919) % n) in s

    def bare_contains(i: int) -> None:
        _ = (nxt[1] - 1 - (i * 7919) % n) in bare

    return {"add-new (evict)": (add_new, bare_add_new), "contains": (contains, bare_contains)}


def deque_cases(n: int) -> dict[str, tuple[Step, Step]]:
    d: BoundedDeque[int] = BoundedDeque("bench.deque", n, registry=_registry())
    bare: deque[int] = deque(maxlen=n)
    for i in range(n):
        d.append(i)
        bare.append(i)

    def pop_push(i: int) -> None:
        d.popleft()
        d.append(i)

    def bare_pop_push(i: int) -> None:
        bare.popleft()
        bare.append(i)

    return {"append (evict)": (d.append, bare.append), "popleft+append": (pop_push, bare_pop_push)}


def queue_cases(n: int) -> dict[str, tuple[Step, Step]]:
    q: BoundedQueue[int] = BoundedQueue("bench.queue", n, Overflow.EVICT_OLDEST, registry=_registry())
    bare: deque[int] = deque(maxlen=n)
    for i in range(n):
        q.put_nowait(i)
        bare.append(i)

    def get_put(i: int) -> None:
        q.get_nowait()
        q.put_nowait(i)

    def bare_get_put(i: int) -> None:
        bare.popleft()
        bare.append(i)

    return {"put_nowait (evict)": (q.put_nowait, bare.append), "get_nowait+put": (get_put, bare_get_put)}


def dict_cases(n: int) -> dict[str, tuple[Step, Step]]:
    d: BoundedDict[int, int] = BoundedDict("bench.dict", n, registry=_registry())
    bare: dict[int, int] = {}
    for i in range(n - 1):  # room for one more: a new key is accepted, then deleted
        d[i] = i
        bare[i] = i
    nxt = [n, n]

    def set_new(_: int) -> None:
        k = nxt[0]
        d[k] = 0
        del d[k]
        nxt[0] += 1

    def bare_set_new(_: int) -> None:
        k = nxt[1]
        bare[k] = 0
        del bare[k]
        nxt[1] += 1

    def set_old(i: int) -> None:
        d[(i * 7919) % (n - 1)] = i

    def bare_set_old(i: int) -> None:
        bare[(i * 7919) % (n - 1)] = i

    def get(i: int) -> None:
        d.get((i * 7919) % (n - 1))

    def bare_get(i: int) -> None:
        bare.get((i * 7919) % (n - 1))

    return {"set-new+del": (set_new, bare_set_new), "set-old": (set_old, bare_set_old), "get": (get, bare_get)}


def set_cases(n: int) -> dict[str, tuple[Step, Step]]:
    s: BoundedSet[int] = BoundedSet("bench.set", n, registry=_registry())
    bare: set[int] = set()
    for i in range(n - 1):
        s.add(i)
        bare.add(i)
    nxt = [n, n]

    def add_new(_: int) -> None:
        k = nxt[0]
        s.add(k)
        s.discard(k)
        nxt[0] += 1

    def bare_add_new(_: int) -> None:
        k = nxt[1]
        bare.add(k)
        bare.discard(k)
        nxt[1] += 1

    def contains(i: int) -> None:
        _ = (i * 7919) % (n - 1) in s

    def bare_contains(i: int) -> None:
        _ = (i * 7919) % (n - 1) in bare

    return {"add-new+discard": (add_new, bare_add_new), "contains": (contains, bare_contains)}


CONTAINERS: dict[str, Callable[[int], dict[str, tuple[Step, Step]]]] = {
    "LruMap": lru_cases,
    "TtlMap": ttl_cases,
    "TtlSet": ttlset_cases,
    "BoundedDeque": deque_cases,
    "BoundedQueue": queue_cases,
    "BoundedDict": dict_cases,
    "BoundedSet": set_cases,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1000,1000000", help="comma-separated container sizes")
    ap.add_argument("--budget", type=float, default=0.2, help="seconds per measurement")
    ap.add_argument("--ops", type=int, default=300_000, help="max operations per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (the median is shown)")
    ap.add_argument("--only", default="", help="comma-separated containers to run (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    only = {c for c in args.only.split(",") if c}
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for cname, make in CONTAINERS.items():
        if only and cname not in only:
            continue
        for n in sizes:
            cases = make(n)
            for op, (ours, bare) in cases.items():
                ours_runs, bare_runs = [], []
                for _ in range(args.repeat):  # interleaved, so both see the same machine load
                    ours_runs.append(measure(ours, args.budget, args.ops))
                    bare_runs.append(measure(bare, args.budget, args.ops))
                rows.append({
                    "container": cname, "op": op, "size": n,
                    "ops_per_s": statistics.median(ours_runs),
                    "bare_ops_per_s": statistics.median(bare_runs),
                    "runs": ours_runs, "bare_runs": bare_runs,
                })
            del cases
            gc.collect()
        if cname == "TtlMap":
            for n in sizes:
                ours_s, bare_s = ttl_expire_case(n, args.budget, args.ops)
                rows.append({"container": "TtlMap", "op": "expire (per entry)", "size": n,
                             "ops_per_s": ours_s, "bare_ops_per_s": bare_s})
                gc.collect()
    elapsed = time.perf_counter() - t0

    small, large = min(sizes), max(sizes)
    by_key = {(r["container"], r["op"], r["size"]): r for r in rows}
    print(f"bounded containers, ops/s (python {platform.python_version()}, {elapsed:.0f} s)")
    header = f"{'container':<13} {'operation':<20} {'@' + format(small, ','):>12} {'@' + format(large, ','):>12}"
    header += f" {'flat':>6} {'bare flat':>9} {'vs bare @' + format(small, ','):>15}"
    header += f" {'vs bare @' + format(large, ','):>17}"
    print(header)
    print("-" * len(header))
    summary = []
    seen: set[tuple[str, str]] = set()
    for r in rows:
        key = (r["container"], r["op"])
        if key in seen:
            continue
        seen.add(key)
        a, b = by_key[(*key, small)], by_key[(*key, large)]
        flat = b["ops_per_s"] / a["ops_per_s"]
        bare_flat = b["bare_ops_per_s"] / a["bare_ops_per_s"]
        ra, rb = a["ops_per_s"] / a["bare_ops_per_s"], b["ops_per_s"] / b["bare_ops_per_s"]
        summary.append({"container": key[0], "op": key[1], "flat": flat, "bare_flat": bare_flat,
                        "vs_bare_small": ra, "vs_bare_large": rb})
        print(f"{key[0]:<13} {key[1]:<20} {a['ops_per_s']:>12,.0f} {b['ops_per_s']:>12,.0f} {flat:>6.2f}"
              f" {bare_flat:>9.2f} {ra:>15.2f} {rb:>17.2f}")
    print("flat = ops/s at the large size / at the small size (1.0: no slowdown with size); bare flat: the same")
    print("for the bare structure, i.e. what cache misses cost at that size (the cyclic GC is off while timing);")
    print("vs bare = ops/s / ops/s of the bare stdlib structure doing the same without bounds or stats.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "bounded_ops",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": sys.argv[1:],
        "budget_s": args.budget,
        "max_ops": args.ops,
        "elapsed_s": elapsed,
        "rows": rows,
        "summary": summary,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
