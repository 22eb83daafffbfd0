"""``bench/call_cpu.py`` runs (#14): CPU time per RPC call and per pub/sub round trip with both ends
in one process, for this tree and a base tree alternating. Its figures are in docs/performance.md; here only that it
measures what it says and refuses what it cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "call_cpu.py"
SRC = Path(__file__).resolve().parent.parent / "src"


def test_the_bench_measures_both_trees_alternating(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, str(BENCH), "--base", str(SRC), "--rounds", "2", "--batches", "10",
                           "--sequential", "50", "--round-trips", "30", "--json", str(out)], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    assert "| RPC call, 64 in flight |" in done.stdout and "| pub/sub round trip |" in done.stdout
    assert "current / base" in done.stdout
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"base", "current"} and all(len(v) == 2 for v in res["runs"].values())
    for tree in res["medians"].values():
        # a call is tens of µs of CPU at both ends together, sequential ones more (a loop pass each)
        assert 5 < tree["in_flight_64_us"] < tree["sequential_us"] < 5_000, tree
        # a round trip is two hops of the gossip layer, each dearer than an RPC hop
        assert tree["sequential_us"] < tree["round_trip_us"] < 10_000, tree
    # the same tree twice: within the machine's noise of each other
    assert 0.5 < res["ratios"]["in_flight_64_us"] < 2.0, res["ratios"]


def test_a_base_without_quicmesh_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--base", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "no quicmesh package" in done.stderr, done.stderr
