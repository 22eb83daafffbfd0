#!/usr/bin/env python3
"""quicmesh and the systems users would pick instead, side by side in one run (`make bench-peers`).

    python bench/peers.py [--window 5] [--repeat 3] [--quick] [--systems quicmesh,nats,zenoh,qh3-raw]
                          [--no-install] [--json bench/results/peers.json]

Columns: quicmesh under the asyncio loop and under uvloop (skipped with the reason printed when
uvloop cannot be imported), quicmesh under the asyncio loop with ``busy_poll_us`` = 1000 (its
nodes poll for 1 ms after each transmit instead of sleeping: lower latency for CPU), NATS
(Debian's nats-server + nats-py), Zenoh (eclipse-zenoh, two peer sessions) and the raw qh3
ceiling (bench/quic_raw.py's own server and client: one stream, 4-byte-length-prefixed frames;
asleep between datagrams like NATS's and Zenoh's Python sides). Each system runs as two processes
on 127.0.0.1 (plus the broker for NATS), through the public API a user writes (bench/peerslib/adapters.py); quicmesh's
processes run as ``quicmesh node`` does (``PYTHONMALLOC=malloc`` and the node's garbage-collector
thresholds, ``gc_young_threshold``). The same scenarios (bench/peerslib/worker.py) drive every
system:

* pub/sub 64 B and 1 KiB: the subscriber counts data messages; the publisher publishes for one
  window as fast as the system lets it (its own back-pressure: quicmesh's ``publish`` awaits a
  congested connection, Zenoh's congestion control ``BLOCK``, nats-py's 2 MiB pending buffer); msg/s is
  what the subscriber received over first publish to last receipt; lost = sent - received.
* RTT: ping-pong over two topics (the server side republishes), one in flight, p50 / p99.
* RPC: echo calls, sequential and 64 in flight (quicmesh call/advertise, NATS request/reply,
  Zenoh get/queryable).
* light-client cycles/s: connect, subscribe, publish one message, receive it, unsubscribe, close
  (quicmesh: ``quicmesh.Client`` through the server node's gateway; NATS: a new connection;
  Zenoh: a ``client``-mode session to the server peer).
* churn: the long-lived side's RSS (server process; nats-server for NATS) sampled every 0.1 s
  during the light-client runs; bytes per cycle = the least-squares slope of RSS over cycles
  within each run but the first, pooled over the runs (the floods between runs are not counted).

Each case runs ``--repeat`` times (default 3) for ``--window`` seconds (default 5; ``--quick``:
0.5); the systems take turns run by run, so a shared machine's background load meets all of
them alike. The table shows medians, and the goals of issue #14 are evaluated on them; the JSON
(default bench/results/peers.json) holds every run, the ratios and the goals.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerslib.install import ensure_peers
from peerslib.report import LABELS, evaluate, goal_lines, ratio_lines, ratios, summarize, summarize_raw, table
from peerslib.run import Session, raw_qh3_run

SYSTEMS = ("quicmesh", "nats", "zenoh", "qh3-raw")
TIME_LIMIT = 1800.0
"""Seconds the whole run may take; cases not started by then are left out (and reported)."""


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("quicmesh", "qh3", "eclipse-zenoh", "nats-py", "uvloop"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    from peerslib.run import nats_server_path

    exe = nats_server_path()
    if exe:
        import subprocess

        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False)
        out["nats-server"] = done.stdout.strip() or done.stderr.strip()
    return out


def plan(systems: tuple[str, ...], missing: dict[str, str]) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Columns to run ``(key, system, loop)`` and columns skipped ``{key: reason}``."""
    cols: list[tuple[str, str, str]] = []
    skipped: dict[str, str] = {}
    if "quicmesh" in systems:
        cols.append(("quicmesh-asyncio", "quicmesh", "asyncio"))
        if "uvloop" in missing:
            skipped["quicmesh-uvloop"] = f"uvloop not importable: {missing['uvloop']}"
        else:
            cols.append(("quicmesh-uvloop", "quicmesh", "uvloop"))
        cols.append(("quicmesh-busy", "quicmesh", "asyncio"))  # busy_poll_us (report.BUSY_POLL_US)
    for key, needs in (("nats", ("nats", "nats-server")), ("zenoh", ("zenoh",))):
        if key in systems:
            why = [missing[n] for n in needs if n in missing]
            if why:
                skipped[key] = "; ".join(why)
            else:
                cols.append((key, key, "asyncio"))
    return cols, skipped


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    missing = ensure_peers(install=not args.no_install)
    cols, skipped = plan(systems, missing)
    for key, why in skipped.items():
        print(f"skipped {key}: {why}", flush=True)
    sessions: dict[str, Session] = {}
    raw_runs: list[dict[str, Any]] = []
    left_out: list[str] = []
    try:
        for key, system, loop_kind in cols:
            s = Session(key, system, loop_kind, args.window)
            sessions[key] = s  # stopped in finally even if start fails half-way
            try:
                s.start()
            except Exception as exc:
                skipped[key] = f"could not start: {exc}"
                print(f"skipped {key}: could not start: {exc}", file=sys.stderr, flush=True)
                s.stop()
                del sessions[key]
        for r in range(args.repeat):
            for key, s in sessions.items():
                if time.monotonic() - started > TIME_LIMIT:
                    left_out.append(f"{key} run {r + 1}")
                    continue
                print(f"run {r + 1}/{args.repeat}: {key}", flush=True)
                s.run_all(r)
            if "qh3-raw" in systems:
                print(f"run {r + 1}/{args.repeat}: qh3-raw", flush=True)
                try:
                    raw_runs.append(raw_qh3_run(args.window))
                except Exception as exc:
                    raw_runs.append({"error": f"{type(exc).__name__}: {exc}"})
                    print(f"  qh3-raw: {exc}", file=sys.stderr)
    finally:
        for s in sessions.values():
            s.stop()
    res: dict[str, Any] = {}
    for key, s in sessions.items():
        res[key] = summarize(s.runs)
        res[key]["churn"] = s.churn()
        res[key]["loop"] = {"asked": s.loop_kind, "running": s.loop_seen}
        res[key]["seconds"] = {k: round(v, 1) for k, v in s.timings.items()}
    for key, why in skipped.items():
        res[key] = {"skipped": why}
    if "qh3-raw" in systems:
        res["qh3-raw"] = summarize_raw(raw_runs)
    order = [k for k in LABELS if k in res]
    res = {k: res[k] for k in order}
    if left_out:
        print(f"time limit: left out {', '.join(left_out)}", file=sys.stderr)
    return {"results": res, "left_out": left_out, "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=float, default=5.0, help="seconds per case and run (default 5)")
    p.add_argument("--quick", action="store_true", help="short windows (0.5 s): a smoke run, not figures")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; the table shows medians (default 3)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--no-install", action="store_true", help="do not pip/apt-install missing peers")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "peers.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.window = min(args.window, 0.5)
    if args.repeat < 1 or args.window <= 0:
        p.error("--repeat must be >= 1 and --window > 0")
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    out = run(args)
    res = out["results"]
    goals = evaluate(res)
    print()
    print(table(res))
    print()
    print(ratio_lines(res))
    print()
    print(goal_lines(goals))
    doc = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "versions": _versions(),
        "args": vars(args),
        "results": res,
        "ratios": ratios(res),
        "goals": goals,
        "goals_passed": sum(1 for g in goals if g["pass"] is True),
        "goals_failed": sum(1 for g in goals if g["pass"] is False),
        "goals_not_measured": sum(1 for g in goals if g["pass"] is None),
        "left_out": out["left_out"],
        "seconds": out["seconds"],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    print(f"\n{doc['seconds']} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
