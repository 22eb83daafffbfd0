"""``bench/busy_poll.py`` runs (#14): two node processes per ``busy_poll_us`` window, latency and
the CPU both spent per operation, written as JSON. Its figures are in docs/performance.md; here
only that it measures what it says (a window makes both processes spend CPU while a reply is
awaited: more CPU-seconds per second than asleep)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchkit import load_bench

BENCH = Path(__file__).resolve().parent.parent / "bench" / "busy_poll.py"


def test_the_bench_measures_latency_and_cpu_per_window(tmp_path: Path) -> None:
    out = tmp_path / "busy.json"
    done = subprocess.run([sys.executable, str(BENCH), "--windows", "0,2000", "--rounds", "1", "--count", "300",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    assert "| CPU µs/op (both) |" in done.stdout and "busy_poll_us=2000 against 0:" in done.stdout
    med = json.loads(out.read_text())["medians"]
    assert set(med) == {"0", "2000"}
    for window in med.values():
        assert set(window) == {"rpc", "rtt", "rtt paced", "client rpc"}
        for v in window.values():
            assert 0 < v["p50_us"] <= v["p99_us"] and v["ops_per_s"] > 0 and v["cpu_us_per_op"] > 0
            assert v["sleeps_a"] >= 0 and v["sleeps_b"] >= 0 and v["windows_a"] >= 0
    # back to back, a window keeps both processes awake between operations: nearly two cores
    # busy, against about one asleep (each sleeps while the other works)
    assert med["2000"]["rpc"]["cpu_cores"] > med["0"]["rpc"]["cpu_cores"], med
    # asleep, the answering process sleeps about once per call; with a window it sleeps only
    # when a window closed with nothing come (once per window opened, at most), and fewer times
    # than asleep. Measured alone: 0.00 sleeps and ~0.00 windows per call. Under the suite's load
    # (Python 3.12, 2026-12-07) the caller was starved past the window (p50 4.9 ms): 0.51 sleeps
    # per call, so how often the window held is the load's, and the test judges the mechanism.
    rpc = med["2000"]["rpc"]
    assert med["0"]["rpc"]["sleeps_a"] > 0.5 and med["0"]["rpc"]["windows_a"] == 0, med
    assert rpc["sleeps_a"] <= rpc["windows_a"] + 0.02 and rpc["sleeps_a"] < med["0"]["rpc"]["sleeps_a"], med


def test_a_window_names_its_event_loop_and_a_bad_one_is_refused() -> None:
    """``--windows 0,1000,1000@uvloop`` sets the loops side by side (``QUICMESH_EVENT_LOOP`` for
    the node processes); a window the bench cannot run is a usage error before anything starts."""
    bench = load_bench("busy_poll")
    assert bench._spec("1000") == (1000, "asyncio", False)
    assert bench._spec("0+dma") == (0, "asyncio", True)
    assert bench._spec("250@uvloop") == (250, "uvloop", False)
    for bad in ("x", "1000@trio", "-5"):
        done = subprocess.run([sys.executable, str(BENCH), "--windows", f"0,{bad}"], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2 and "--windows" in done.stderr, (bad, done.stderr)
