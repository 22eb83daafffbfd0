"""``bench/http_fanout.py`` runs (#14): a node's HTTP face in its own process streams topic
messages to SSE and WebSocket consumers; its CPU per delivered message, written as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "http_fanout.py"


@pytest.mark.parametrize("kind", ["sse", "ws"])
def test_the_bench_measures_a_faces_cpu_per_delivery(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "fan.json"
    args = ["--kind", kind, "--streams", "10", "--messages", "200", "--rounds", "2", "--json", str(out)]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240, check=True)
    assert "CPU µs per delivery" in done.stdout
    data = json.loads(out.read_text())
    res = data["results"]["current"]
    print(f"10 {kind} streams x 200 messages: {res}")
    assert (data["kind"], data["streams"], data["messages"], data["rounds"], res["runs"]) == (kind, 10, 200, 2, 1)
    # every stream got every message (the round waits for that) at a plausible rate and cost;
    # 0.9 (SSE) and 7.1 (WebSocket) µs of the node's CPU per delivery at 50 streams x 1,000 messages
    assert res["deliveries_per_second"] > 1_000
    assert 0 <= res["node_cpu_us_per_delivery"] < 1_000
