"""Medians of the runs, the goals of issue #14 evaluated on them, and the printed table.

Every goal is computed from the medians in the same JSON (``value``, ``target``, ``pass``);
a goal whose inputs were not measured (a peer missing, a case failed) has ``pass: null`` and a
``reason``, never a pass.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

QM = ("quicmesh-asyncio", "quicmesh-uvloop", "quicmesh-busy")
BUSY_POLL_US = 1000
"""``busy_poll_us`` of the ``quicmesh-busy`` column (asyncio loop): its nodes poll instead of
sleeping for 1 ms after each transmit (``quicmesh.runtime.busy_poll``; off by default)."""
LABELS = {"quicmesh-asyncio": "quicmesh, asyncio loop", "quicmesh-uvloop": "quicmesh, uvloop",
          "quicmesh-busy": f"quicmesh, asyncio loop, busy_poll_us={BUSY_POLL_US}",
          "nats": "NATS (nats-server + nats-py)", "zenoh": "Zenoh (peer, congestion control block)",
          "qh3-raw": "raw qh3, one stream (bench/quic_raw.py)"}


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r and r[key] is not None and not math.isnan(r[key])]
    return statistics.median(vals) if vals else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per case of one system's runs (failed runs are listed, not averaged)."""
    out: dict[str, Any] = {}
    for case, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        entry: dict[str, Any] = {"runs": rs, "runs_ok": len(ok)}
        if not ok:
            entry["error"] = rs[0].get("error", "no run") if rs else "no run"
        for key in ("msgs_per_s", "p50_us", "p99_us", "calls_per_s", "p50_ms", "p99_ms", "cycles_per_s"):
            m = _median(ok, key)
            if m is not None:
                entry[key] = m
        for key in ("sent", "lost", "received", "subscriber_dropped"):
            if any(key in r for r in ok):
                entry[key] = sum(int(r.get(key) or 0) for r in ok)
        errs: dict[str, int] = {}
        for r in ok:
            for k, v in (r.get("errors") or {}).items():
                errs[k] = errs.get(k, 0) + v
        if errs:
            entry["errors"] = errs
        out[case] = entry
    return out


def summarize_raw(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The raw qh3 runs in the same shape (stream = pub/sub, request/reply = RTT and RPC)."""
    ok = [r for r in runs if "error" not in r]

    def med(key: str, scale: float = 1.0) -> float | None:
        m = _median(ok, key)
        return None if m is None else m * scale

    def best(key: str) -> float | None:
        vals = [r[key] for r in ok if key in r]
        return max(vals) if vals else None

    return {
        "pubsub_64B": {"msgs_per_s": med("stream_64B_msgs_per_s"), "best": best("stream_64B_msgs_per_s")},
        "pubsub_1024B": {"msgs_per_s": med("stream_1024B_msgs_per_s"), "best": best("stream_1024B_msgs_per_s")},
        "rtt": {"p50_us": med("reqrep_1_p50_ms", 1000), "p99_us": med("reqrep_1_p99_ms", 1000)},
        "rpc_sequential": {"calls_per_s": med("reqrep_1_req_per_s"), "best": best("reqrep_1_req_per_s")},
        "rpc_64_in_flight": {"calls_per_s": med("reqrep_64_req_per_s"), "best": best("reqrep_64_req_per_s")},
        # connect, one request/reply, close sent: the least a light-client cycle does over qh3
        "light_client": {"cycles_per_s": med("connect_cycle_per_s"), "best": best("connect_cycle_per_s")},
        "runs": runs, "runs_ok": len(ok),
    }


def _get(res: dict[str, Any], col: str, case: str, key: str) -> float | None:
    v = res.get(col, {}).get(case, {}).get(key)
    return float(v) if isinstance(v, int | float) and not math.isnan(v) else None


def _goal(name: str, col: str, value: float | None, target: float | None, le: bool, what: str,
          ceiling: float | None = None) -> dict[str, Any]:
    """One goal's verdict. ``ceiling``: raw qh3's figure for the same case in the same run (the
    transport alone, no quicmesh code); a target past it (``beyond_raw_ceiling``) asks quicmesh to
    beat the library it runs on."""
    g: dict[str, Any] = {"goal": name, "column": col, "value": value, "target": target,
                         "comparison": "<=" if le else ">=", "what": what}
    if value is None or target is None:
        g["pass"] = None
        g["reason"] = "not measured: " + ("quicmesh value" if value is None else "reference value") + " missing"
    else:
        g["pass"] = value <= target if le else value >= target
        g["ratio"] = value / target if target else None
    if ceiling is not None:
        g["raw_ceiling"] = ceiling
        if target is not None:
            g["beyond_raw_ceiling"] = target < ceiling if le else target > ceiling
    return g


def evaluate(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals of issue #14, per quicmesh column present in ``res``."""
    goals: list[dict[str, Any]] = []

    def scaled(v: float | None, k: float) -> float | None:
        return None if v is None else v * k

    def raw(case: str, key: str) -> float | None:
        return _get(res, "qh3-raw", case, key)

    for col in QM:
        if col not in res or "skipped" in res[col]:
            continue
        rtt = _get(res, col, "rtt", "p50_us")
        goals.append(_goal("rtt_p50_le_nats", col, rtt, _get(res, "nats", "rtt", "p50_us"), True,
                           "RTT p50 (µs) <= NATS's", raw("rtt", "p50_us")))
        goals.append(_goal("rtt_p50_le_1.3x_raw", col, rtt, scaled(raw("rtt", "p50_us"), 1.3), True,
                           "RTT p50 (µs) <= 1.3x raw qh3 request/reply p50"))
        seq = _get(res, col, "rpc_sequential", "calls_per_s")
        par = _get(res, col, "rpc_64_in_flight", "calls_per_s")
        goals.append(_goal("rpc_seq_ge_zenoh", col, seq, _get(res, "zenoh", "rpc_sequential", "calls_per_s"), False,
                           "RPC sequential calls/s >= Zenoh's", raw("rpc_sequential", "calls_per_s")))
        goals.append(_goal("rpc_64_ge_2x_zenoh", col, par,
                           scaled(_get(res, "zenoh", "rpc_64_in_flight", "calls_per_s"), 2.0), False,
                           "RPC 64 in flight calls/s >= 2x Zenoh's", raw("rpc_64_in_flight", "calls_per_s")))
        goals.append(_goal("rpc_seq_ge_60pct_raw", col, seq,
                           scaled(raw("rpc_sequential", "calls_per_s"), 0.6), False,
                           "RPC sequential >= 60 % of raw qh3 request/reply (1 in flight)"))
        goals.append(_goal("rpc_64_ge_60pct_raw", col, par,
                           scaled(raw("rpc_64_in_flight", "calls_per_s"), 0.6), False,
                           "RPC 64 in flight >= 60 % of raw qh3 request/reply (64 in flight)"))
        goals.append(_goal("pubsub_64B_ge_zenoh", col, _get(res, col, "pubsub_64B", "msgs_per_s"),
                           _get(res, "zenoh", "pubsub_64B", "msgs_per_s"), False, "pub/sub 64 B msg/s >= Zenoh's"))
        goals.append(_goal("pubsub_1KiB_ge_nats", col, _get(res, col, "pubsub_1024B", "msgs_per_s"),
                           _get(res, "nats", "pubsub_1024B", "msgs_per_s"), False, "pub/sub 1 KiB msg/s >= NATS's"))
        lost = [_get(res, col, c, "lost") for c in ("pubsub_64B", "pubsub_1024B")]
        goals.append(_goal("pubsub_0_lost", col, None if None in lost else sum(x or 0 for x in lost), 0.0, True,
                           "pub/sub messages lost (64 B and 1 KiB, all runs) == 0"))
        goals.append(_goal("light_client_ge_50pct_nats", col, _get(res, col, "light_client", "cycles_per_s"),
                           scaled(_get(res, "nats", "light_client", "cycles_per_s"), 0.5), False,
                           "light-client cycles/s >= 50 % of NATS's", raw("light_client", "cycles_per_s")))
    return goals


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(res: dict[str, Any]) -> str:
    head = ("system (medians)", "pub/sub 64 B msg/s (lost)", "1 KiB msg/s (lost)", "RTT p50 / p99 µs",
            "RPC seq/s", "RPC 64 in flight/s", "light-client cycles/s", "churn RSS B/cycle")
    rows = [head]
    for col, label in LABELS.items():
        r = res.get(col)
        if r is None:
            continue
        if "skipped" in r:
            rows.append((label, f"skipped: {r['skipped']}", *([""] * (len(head) - 2))))
            continue

        def ps(case: str, r: dict[str, Any] = r) -> str:
            c = r.get(case, {})
            if c.get("msgs_per_s") is None:
                return "failed" if "error" in c else "-"
            if "sent" not in c:
                return _fmt(c["msgs_per_s"])
            return f"{_fmt(c['msgs_per_s'])} ({c['lost'] / max(c['sent'], 1):.1%})"

        def one(case: str, key: str, r: dict[str, Any] = r) -> str:
            c = r.get(case, {})
            return "failed" if "error" in c and key not in c else _fmt(c.get(key))

        rtt = f"{one('rtt', 'p50_us')} / {one('rtt', 'p99_us')}"
        ch = r.get("churn", {})
        churn = _fmt(ch.get("bytes_per_cycle"), ",.0f") if "bytes_per_cycle" in ch else "-"
        lc = one("light_client", "cycles_per_s") if "light_client" in r else "-"
        if lc not in ("-", "failed"):
            lc = _fmt(r["light_client"]["cycles_per_s"], ",.1f")
        rows.append((label, ps("pubsub_64B"), ps("pubsub_1024B"), rtt, one("rpc_sequential", "calls_per_s"),
                     one("rpc_64_in_flight", "calls_per_s"), lc, churn))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


RATIO_CASES = (("pub/sub 64 B", "pubsub_64B", "msgs_per_s"), ("1 KiB", "pubsub_1024B", "msgs_per_s"),
               ("RTT p50 (lower is better)", "rtt", "p50_us"), ("RPC seq", "rpc_sequential", "calls_per_s"),
               ("RPC 64", "rpc_64_in_flight", "calls_per_s"), ("light client", "light_client", "cycles_per_s"))


def ratios(res: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """quicmesh / peer for every case both measured: ``{qm_col: {peer: {case: ratio}}}``."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for col in QM:
        if col not in res or "skipped" in res[col]:
            continue
        for peer in ("nats", "zenoh", "qh3-raw"):
            if peer not in res or "skipped" in res[peer]:
                continue
            per: dict[str, float | None] = {}
            for _, case, key in RATIO_CASES:
                a, b = _get(res, col, case, key), _get(res, peer, case, key)
                per[case] = a / b if a is not None and b else None
            out.setdefault(col, {})[peer] = per
    return out


def ratio_lines(res: dict[str, Any]) -> str:
    lines = []
    for col, peers in ratios(res).items():
        for peer, per in peers.items():
            parts = [f"{label} {per[case]:.2f}" for label, case, _ in RATIO_CASES if per.get(case) is not None]
            lines.append(f"{col} / {peer}: " + (", ".join(parts) or "nothing measured by both"))
    return "\n".join(lines)


def goal_lines(goals: list[dict[str, Any]]) -> str:
    lines = []
    for g in goals:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[g["pass"]]
        if g["pass"] is None:
            lines.append(f"{verdict} {g['column']}: {g['what']} ({g['reason']})")
        else:
            beyond = (f" (beyond raw qh3's own {g['raw_ceiling']:,.1f} in this run)"
                      if g.get("beyond_raw_ceiling") else "")
            lines.append(f"{verdict} {g['column']}: {g['what']}: {g['value']:,.1f} {g['comparison']} "
                         f"{g['target']:,.1f}{beyond}")
    return "\n".join(lines)
