"""Per-hub figures (slopes per churn cycle) and the pass/fail verdict of a run."""

from __future__ import annotations

from typing import Any

from .hubs import Hub
from .settings import RSS_LIMIT
from .stats import ls_slope, theil_sen, window_slopes

__all__ = ["hub_figures", "verdict"]


def hub_figures(hub: Hub) -> dict[str, Any]:
    """A hub's slopes per churn cycle (RSS, Python heap, objects, C heap) and its raw series."""
    measured = [c for c in hub.checkpoints if c["phase"] == "measured" and c["quiet"]]
    xs = [float(c["cycles"]) for c in measured]
    rss = [float(c["rss_bytes"]) for c in measured]
    untrimmed = [float(c["rss_before_trim_bytes"]) for c in measured if c.get("rss_before_trim_bytes") is not None]
    traced = [float(c["traced_bytes"]) for c in measured]
    objs = [float(c["gc_objects"]) for c in measured]
    heap = {k: [float((c.get("malloc") or {}).get(k, 0)) for c in measured] for k in ("uordblks", "fordblks", "hblkhd")}
    final = hub.checkpoints[-1]
    return {
        "name": hub.proc.name,
        "traced": hub.traced,
        "cycles": hub.cycles,
        "measured_checkpoints": len(measured),
        "skipped_checkpoints": sum(1 for c in hub.checkpoints if c["phase"] == "measured" and not c["quiet"]),
        "measured_cycles": (xs[-1] - xs[0]) if xs else 0,
        "rss_slope_bytes_per_cycle": ls_slope(xs, rss),
        "rss_untrimmed_slope_bytes_per_cycle": ls_slope(xs, untrimmed) if len(untrimmed) == len(xs) else None,
        "rss_theil_sen_bytes_per_cycle": theil_sen(xs, rss),
        "rss_window_slopes_bytes_per_cycle": window_slopes(xs, rss),
        "traced_slope_bytes_per_cycle": ls_slope(xs, traced) if hub.traced else None,
        "gc_objects_slope_per_cycle": ls_slope(xs, objs),
        "heap_in_use_slope_bytes_per_cycle": ls_slope(xs, heap["uordblks"]),
        "heap_free_slope_bytes_per_cycle": ls_slope(xs, heap["fordblks"]),
        "heap_mmap_slope_bytes_per_cycle": ls_slope(xs, heap["hblkhd"]),
        "rss_final_untrimmed_bytes": final.get("rss_before_trim_bytes"),
        "rss_baseline_bytes": hub.checkpoints[0]["rss_bytes"],
        "rss_warm_bytes": rss[0] if rss else None,
        "rss_final_bytes": final["rss_bytes"],
        "top_growth": final.get("top_growth", []),
        "checkpoints": [{k: v for k, v in c.items() if k not in ("event", "top_growth")} for c in hub.checkpoints],
        "samples": hub.samples,
    }


def verdict(report: dict[str, Any], recovery_limit: float, *, rss_gate: bool = True) -> dict[str, Any]:
    """Pass or fail, with the reasons: RSS and heap slopes (when gated), recovery, failed sessions."""
    reasons: list[str] = []
    judged = [h for h in report["hubs"] if not h["traced"]] or report["hubs"]
    rss: dict[str, float | None] = {}
    for h in judged:
        slope = h["rss_slope_bytes_per_cycle"]
        rss[h["name"]] = slope
        if not rss_gate:
            continue
        if slope is None or h["measured_checkpoints"] < 5:
            reasons.append(f"{h['name']}: too few measured checkpoints ({h['measured_checkpoints']}) for a slope")
        elif slope > RSS_LIMIT:
            reasons.append(f"{h['name']}: RSS grew {slope:.1f} bytes/cycle after warm-up (limit {RSS_LIMIT:g})")
    heap: dict[str, float | None] = {}
    for h in report["hubs"]:
        if not h["traced"]:
            continue
        slope = h["traced_slope_bytes_per_cycle"]
        heap[h["name"]] = slope
        if not rss_gate:
            continue
        if slope is None:
            reasons.append(f"{h['name']}: no Python-heap slope measured")
        elif slope > RSS_LIMIT:
            reasons.append(f"{h['name']}: Python heap grew {slope:.1f} bytes/cycle after warm-up (limit {RSS_LIMIT:g})")
    for rec in report["recovery"]:
        for name, v in rec["not_back"].items():
            reasons.append(f"{rec['hub']}: {name} is {v['now']}, not back to {v['baseline']} "
                           f"within {recovery_limit:g} s")
    churn = report["churn"]
    failed = sum(churn["errors"].values())
    if churn["cycles"] < 100:
        reasons.append(f"only {churn['cycles']} churn cycles completed")
    if failed > 0.01 * max(1, churn["cycles"] + failed):
        reasons.append(f"{failed} of {churn['cycles'] + failed} sessions failed: {churn['errors']}")
    if churn["echo_mismatch"]:
        reasons.append(f"{churn['echo_mismatch']} echo replies did not match")
    if any(report["hub_exit_codes"]):
        reasons.append(f"hub exit codes {report['hub_exit_codes']}")
    return {"pass": not reasons, "reasons": reasons, "rss_limit_bytes_per_cycle": RSS_LIMIT,
            "rss_judged": rss_gate, "rss_slope_bytes_per_cycle": rss, "heap_slope_bytes_per_cycle": heap,
            "recovery_seconds": {r["hub"]: r["seconds"] for r in report["recovery"]}}
