"""``bench/gateway_memory.py`` runs (#14): a gateway node in its own process, light clients
connected to it, the gateway's resident size per client, written as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gateway_memory.py"


def test_the_bench_measures_a_gateways_memory_per_client(tmp_path: Path) -> None:
    out = tmp_path / "gw.json"
    done = subprocess.run([sys.executable, str(BENCH), "--clients", "60", "--mode", "own", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=True)
    assert "KiB per client" in done.stdout
    data = json.loads(out.read_text())
    res = data["results"]["current"]
    print(f"60 clients, a topic each: {res}")
    assert data["clients"] == 60 and data["mode"] == "own" and res["runs"] == 1
    assert res["rss_after_mib"] > res["rss_before_mib"] > 20
    # each client holds a QUIC connection (~58 KiB measured at 800), not megabytes
    assert 5 < res["kib_per_client"] < 1024
