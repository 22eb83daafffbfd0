"""``bench/wakeups.py`` (#14): two node processes on this tree and two on another, alternating;
latency, CPU and sleeps per operation. Here only that it measures what it says: both trees
(this one twice over), every phase, and sleeps that follow the operations (each process sleeps
about once per back-to-back operation: it waits for the other's answer)."""

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
        for v in tree.values():
            assert 0 < v["p50_us"] <= v["p99_us"] and v["cpu_us_per_op"] > 0
            assert 0.3 < v["sleeps_a"] < 10 and 0.3 < v["sleeps_b"] < 10, v


def test_a_base_without_quicmesh_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--base", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "--base" in done.stderr
