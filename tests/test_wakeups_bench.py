"""``bench/wakeups.py`` (#14): two node processes on this tree and two on another, alternating;
latency, CPU and sleeps per operation. Here only that it measures what it says: both trees
(this one twice over), every phase, and sleeps that follow the operations. Round trips 5 ms
apart start from idle loops, so both processes sleep at least once per operation. Back to back,
the side that starts each operation (A) waits for the answer, so it sleeps about once per
operation; the answering side (B) may not: its work after it answered (the ACK, the caches) can
last until the next request is there, and then it does not wait (0.21 and 0.36 sleeps per round
trip for B in one run under Python 3.12, with this tree on both sides)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "wakeups.py"


def test_the_bench_compares_two_trees_phase_by_phase(tmp_path: Path) -> None:
    out = tmp_path / "wakeups.json"
    done = subprocess.run([sys.executable, str(BENCH), "--base", str(ROOT / "src"), "--rounds", "1", "--count", "300",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    assert "| sleeps/op (A, B)" in done.stdout and "rtt paced: current / base:" in done.stdout
    doc = json.loads(out.read_text())
    med = doc["medians"]
    assert set(med) == {"current", "base"}
    for tree in med.values():
        assert set(tree) == {"rpc", "rtt", "rtt paced"}
        for phase, v in tree.items():
            assert 0 < v["p50_us"] <= v["p99_us"] and v["cpu_us_per_op"] > 0
            assert 0 <= v["sleeps_b"] < 10 and v["sleeps_a"] < 10, v
            if phase == "rtt paced":  # 5 ms idle before each round trip: both sleep
                assert v["sleeps_a"] >= 0.9 and v["sleeps_b"] >= 0.9, (phase, v)
            else:  # back to back: A waits for each answer
                assert v["sleeps_a"] > 0.3, (phase, v)


def test_a_base_without_quicmesh_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--base", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "--base" in done.stderr
