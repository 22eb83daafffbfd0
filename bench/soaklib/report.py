"""The report files (JSON and a PNG of four plots) and the printed summary."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .hubs import Hub
from .settings import HISTORY, SoakOptions

__all__ = ["file_stem", "plot", "print_report", "write_report"]


def file_stem(opts: SoakOptions) -> str:
    """File name stem of a run's outputs (``soak-2m``)."""
    return f"soak-{opts.tag or f'{opts.minutes:g}m'}"


def write_report(report: dict[str, Any], hubs: Sequence[Hub], opts: SoakOptions) -> None:
    """Write the report as JSON and its plots as PNG under ``opts.out``."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(opts)
    report["files"] = {"json": str(out / f"{stem}.json"), "png": str(out / f"{stem}.png")}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    plot(report, out / f"{stem}.png")


def plot(report: dict[str, Any], path: Path) -> None:
    """Four plots: RSS over time, RSS against cycles, container sizes, connections/tasks/fds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hubs = report["hubs"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    ax = axes[0][0]
    for h in hubs:
        ts = [s["t"] for s in h["samples"] if "rss" in s]
        ax.plot(ts, [s["rss"] / 2**20 for s in h["samples"] if "rss" in s], lw=0.8,
                label=f"{h['name']}{' (traced)' if h['traced'] else ''} /metrics")
        cps = [c for c in h["checkpoints"]]
        ax.plot([c["t"] for c in cps], [c["rss_bytes"] / 2**20 for c in cps], ".", ms=4,
                label=f"{h['name']} checkpoints (after gc)")
    for key, style in (("churn_start_t", "g--"), ("warmup_end_t", "b:"), ("churn_end_t", "r--")):
        ax.axvline(report[key], color=style[0], ls=style[1:], lw=1)
    ax.set_title("RSS over time (green: churn starts, blue: warm-up ends, red: churn stops)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7)

    ax = axes[0][1]
    for h in hubs:
        cps = [c for c in h["checkpoints"] if c["phase"] == "measured" and c["quiet"]]
        if not cps:
            continue
        xs = [c["cycles"] for c in cps]
        ys = [c["rss_bytes"] / 2**20 for c in cps]
        ax.plot(xs, ys, ".", ms=4, label=h["name"])
        slope = h["rss_slope_bytes_per_cycle"]
        if slope is not None:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            ax.plot([xs[0], xs[-1]], [my + (x - mx) * slope / 2**20 for x in (xs[0], xs[-1])], lw=1,
                    label=f"{h['name']} fit {slope:+.1f} B/cycle")
    ax.set_title("RSS at quiet checkpoints after warm-up vs cycles served")
    ax.set_xlabel("cumulative churn cycles served by the hub")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    h0 = hubs[-1] if hubs else None
    if h0 is not None:
        names = sorted({n for s in h0["samples"] for n in s.get("containers", {})} - {HISTORY})
        moving = [n for n in names if len({s["containers"].get(n, 0) for s in h0["samples"]}) > 1]
        moving.sort(key=lambda n: -max(s["containers"].get(n, 0) for s in h0["samples"]))
        for n in moving[:12] or names[:10]:
            ax.plot([s["t"] for s in h0["samples"]], [s["containers"].get(n, 0) for s in h0["samples"]], lw=0.8,
                    label=n)
        ax.set_title(f"{h0['name']}: container sizes (the 12 largest that moved)")
        ax.axvline(report["churn_end_t"], color="r", ls="--", lw=1)
        ax.legend(fontsize=6)
    ax.set_xlabel("seconds")

    ax = axes[1][1]
    for h in hubs:
        ts = [s["t"] for s in h["samples"]]
        ax.plot(ts, [s.get("connections", 0) for s in h["samples"]], lw=0.8, label=f"{h['name']} connections")
        ax.plot(ts, [s.get("tasks", 0) for s in h["samples"]], lw=0.8, label=f"{h['name']} asyncio tasks")
        ax.plot(ts, [s.get("fds", 0) for s in h["samples"]], lw=0.8, label=f"{h['name']} open fds")
    ax.axvline(report["churn_end_t"], color="r", ls="--", lw=1)
    ax.set_title("connections, tasks, fds")
    ax.set_xlabel("seconds")
    ax.legend(fontsize=6)
    v = report["verdict"]
    fig.suptitle(f"quicmesh soak: {report['churn']['cycles']} cycles in {report['churn_seconds']:.0f} s "
                 f"({report['cycles_per_second']:.1f}/s); verdict {'PASS' if v['pass'] else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f}{unit}"


def print_report(report: dict[str, Any], say: Any) -> None:
    """Print the run's summary through ``say``."""
    churn = report["churn"]
    say(f"churn: {churn['cycles']} cycles in {report['churn_seconds']:.0f} s = {report['cycles_per_second']:.1f}/s, "
        f"{churn['cancelled_mid_call']} calls cancelled mid-flight, {churn['churner_processes']} churner processes "
        f"({churn['crashed_churners']} crashed on purpose), errors {churn['errors'] or 'none'}")
    say(f"{'hub':6} {'traced':>6} {'cycles':>7} {'measured':>8} {'RSS B/cycle':>11} {'Theil-Sen':>9} "
        f"{'traced B/cyc':>12} {'objs/cycle':>10} {'heap B/cyc':>10} {'free B/cyc':>10} {'RSS base':>9} "
        f"{'RSS end':>8} {'trimmed':>8}")
    for h in report["hubs"]:
        say(f"{h['name']:6} {h['traced']!s:>6} {h['cycles']:7d} {h['measured_checkpoints']:8d} "
            f"{_fmt(h['rss_slope_bytes_per_cycle']):>11} {_fmt(h['rss_theil_sen_bytes_per_cycle']):>9} "
            f"{_fmt(h['traced_slope_bytes_per_cycle']):>12} {_fmt(h['gc_objects_slope_per_cycle']):>10} "
            f"{_fmt(h['heap_in_use_slope_bytes_per_cycle']):>10} {_fmt(h['heap_free_slope_bytes_per_cycle']):>10} "
            f"{h['rss_baseline_bytes'] / 2**20:8.1f}M {(h['rss_final_untrimmed_bytes'] or 0) / 2**20:7.1f}M "
            f"{h['rss_final_bytes'] / 2**20:7.1f}M")
        if h["rss_window_slopes_bytes_per_cycle"]:
            say("    RSS slope by quarter of the measured part: "
                + ", ".join(f"{w:+.1f}" for w in h["rss_window_slopes_bytes_per_cycle"]) + " B/cycle")
        if h.get("rss_untrimmed_slope_bytes_per_cycle") is not None:
            untrimmed = h["rss_untrimmed_slope_bytes_per_cycle"]
            say(f"    RSS slope before each checkpoint's malloc_trim: {untrimmed:+.1f} B/cycle")
        for t in h["top_growth"][:5]:
            say(f"    top growth {t.get('size_diff', 0):+9d} B {t.get('count_diff', 0):+6d} blocks  {t['where']}")
    for r in report["recovery"]:
        say(f"{r['hub']}: containers back to baseline "
            + (f"after {r['seconds']:.1f} s" if r["seconds"] is not None else f"NO: {r['not_back']}")
            + f" (limit {report['recovery_limit_s']:g} s)")
    v = report["verdict"]
    say(f"soak verdict: {'PASS' if v['pass'] else 'FAIL'}"
        + ("" if v["pass"] else " - " + "; ".join(v["reasons"])))
    say(f"wrote {report['files']['json']} and {report['files']['png']}")
