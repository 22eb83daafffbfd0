"""``bench/light_topics.py`` (#14): light-client cycles against a gateway process, each step
timed, and the CPU a cycle costs each side with qh3's TLS handshake share.

The figures are timings (not asserted: this machine is shared); what is asserted is that the
tool measures what it says: every cycle is counted, its steps are the cycle, and the CPU of both
processes is read with the TLS handshake's part of it, on each side, inside the whole.
"""

from __future__ import annotations

from benchkit import load_bench


def test_a_cycle_is_timed_by_step_and_its_cpu_split_by_side() -> None:
    bench = load_bench("light_topics")
    r = bench.run_case(bench.SRC, 0, 40, 0)
    assert r["cycles"] == 40 and r["topics"] == 0
    steps = r["phase_p50_ms"]
    assert set(steps) == set(bench.PHASES)
    assert all(v > 0 for v in steps.values()), steps
    # the steps' medians are the median cycle's parts (each cycle is exactly its steps)
    assert 0.5 * r["p50_ms"] <= sum(steps.values()) <= 1.5 * r["p50_ms"], r
    cpu = r["cpu_per_cycle"]
    # each side's TLS handshake is a part of its CPU, and both sides did handshakes
    assert 0 < cpu["client_tls_ms"] < cpu["client_ms"], cpu
    assert 0 < cpu["gateway_tls_ms"] < cpu["gateway_ms"], cpu
    # one process, one cycle at a time: its CPU per cycle is within the mean cycle's wall time
    assert cpu["client_ms"] <= 1.1 * 1e3 / r["cycles_per_s"], (cpu, r["cycles_per_s"])
