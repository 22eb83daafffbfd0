"""``bench/client_start.py`` runs (#14): one client process per tree against its own gateway,
the figures a script that connects per task pays, written as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "client_start.py"


def test_the_bench_measures_a_client_process(tmp_path: Path) -> None:
    out = tmp_path / "start.json"
    done = subprocess.run([sys.executable, str(BENCH), "--runs", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, check=True)
    assert "| process wall ms |" in done.stdout
    res = json.loads(out.read_text())["results"]["current"]
    print(f"one client process: {res}")
    assert res["runs"] == 2
    assert 0 < res["import_ms"] < res["wall_ms"] and 0 < res["task_ms"] < res["wall_ms"]
    assert 20 < res["maxrss_mib"] < 200
    # a light client's process holds the client, the transport and the wire, not a node
    assert 0 < res["quicmesh_modules"] <= 75
