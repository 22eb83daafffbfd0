"""One soak run: hubs up, baseline, churn rounds with checkpoints, recovery, verdict, files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .churn import Churner
from .hubs import Hub, health_state, http_get, memory, sampler_loop, spawn_hub, wait_quiet
from .report import file_stem, print_report, write_report
from .settings import RSS_GATE_MINUTES, SCRIPT, SOAK_ENV, SoakOptions, ttl_bound
from .verdict import hub_figures, verdict

__all__ = ["run_soak"]

_PACKAGE = Path(__file__).resolve().parent
"""This package, copied into the run's snapshot beside the script churners run."""


async def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Run one soak; returns the report (also written as JSON and PNG under ``opts.out``)."""
    env = {**SOAK_ENV, **opts.extra_env}
    ttl_max, ttls = ttl_bound(env)
    script = SCRIPT
    snapshot: str | None = None
    if opts.snapshot:
        import quicmesh

        snapshot = tempfile.mkdtemp(prefix="quicmesh-soak-")
        shutil.copytree(Path(quicmesh.__file__).parent, Path(snapshot) / "quicmesh",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(_PACKAGE, Path(snapshot) / "soaklib",
                        ignore=shutil.ignore_patterns("__pycache__"))
        script = shutil.copy(SCRIPT, Path(snapshot) / "soak_churner.py")  # imports the soaklib beside it
        env["PYTHONPATH"] = os.pathsep.join(x for x in (snapshot, os.environ.get("PYTHONPATH", "")) if x)
    recovery_limit = 2 * ttl_max
    say = (lambda *_: None) if opts.quiet else (lambda text: print(text, flush=True))
    t0 = time.monotonic()
    hubs: list[Hub] = []
    churners: list[Churner] = []
    stop_sampling = asyncio.Event()
    sampler: asyncio.Future[None] | None = None
    os.makedirs(opts.out, exist_ok=True)
    out = Path(opts.out)
    report: dict[str, Any] = {"options": asdict(opts), "env": env, "ttls": ttls, "recovery_limit_s": recovery_limit}
    churn: dict[str, Any] = {"cycles": 0, "errors": {}, "cancelled_mid_call": 0, "echo_mismatch": 0, "rounds": 0,
                             "churner_processes": 0, "crashed_churners": 0}
    try:
        for i in range(opts.hubs):
            hubs.append(await spawn_hub(f"hub{i}", [hubs[0].proc.address] if hubs else [], env,
                                         out / f"{file_stem(opts)}-hub{i}.stderr"))
            hubs[-1].traced = i < opts.traced
        await hubs[0].proc.wait_peers(opts.hubs - 1, timeout=30)
        for i, hub in enumerate(hubs):
            await hub.proc.request("subscribe", "subscribed", pattern="soak.up.>", id=1, quiet=True)
            if i > 0:
                await hub.proc.request("subscribe", "subscribed", pattern="soak.news", id=2, quiet=True)
            if hub.traced:
                await memory(hub, trace="start", frames=1)
        if opts.hubs > 1:
            await hubs[0].proc.request("wait_subscriber", "ready", topic="soak.news", timeout=20, wait=25)
        for hub in hubs[1:]:
            await hub.proc.request("wait_subscriber", "ready", topic="soak.up.x", timeout=20, wait=25)
        # prime the hubs' own control state (first-message times per subscription) before the baseline
        await hubs[0].proc.request("publish", "published", topic="soak.news", payload="prime", count=1)
        for i, hub in enumerate(hubs):
            await hub.proc.request("publish", "published", topic=f"soak.up.prime{i}", payload="prime", count=1)
        for hub in hubs:
            await hub.proc.request("await_count", "count_reached", id=1, count=opts.hubs, timeout=10, wait=15)
            if hub is not hubs[0]:
                await hub.proc.request("await_count", "count_reached", id=2, count=1, timeout=10, wait=15)
        # the baseline is taken once the hubs have settled (registry, swarm links, caches): every
        # container size unchanged over 4 polls 0.5 s apart, waiting at most 2x the longest TTL
        baseline = [health_state(json.loads(await http_get(h.http, "/health"))) for h in hubs]
        settle_deadline = time.monotonic() + recovery_limit
        steady = 0
        while steady < 4 and time.monotonic() < settle_deadline:
            await asyncio.sleep(0.5)
            now_state = [health_state(json.loads(await http_get(h.http, "/health"))) for h in hubs]
            steady = steady + 1 if now_state == baseline else 0
            baseline = now_state
        report["baseline_settled"] = steady >= 4
        # The hubs' own background traffic (lease refreshes every ttl/3, their gossip and
        # re-announcements) moves a few containers by one or two entries even when nothing else
        # happens, so one instant is not the pre-churn state: the baseline is the largest size seen
        # over one more TTL of quiet. A structure that keeps entries after churn still exceeds it.
        window_end = time.monotonic() + ttl_max
        while time.monotonic() < window_end:
            await asyncio.sleep(0.5)
            for i, h in enumerate(hubs):
                seen = health_state(json.loads(await http_get(h.http, "/health")))
                for name, size in seen.items():
                    baseline[i][name] = max(baseline[i].get(name, 0), size)
        report["baseline_window_s"] = ttl_max
        base_conns = {i: (await h.proc.request("health", "health"))["health"]["connections"]["open"]
                      for i, h in enumerate(hubs)}
        for hub in hubs:
            cp = await memory(hub)
            cp.update(t=time.monotonic() - t0, cycles=0, quiet=True, phase="baseline")
            hub.checkpoints.append(cp)
        say(f"soak: {opts.hubs} hubs ({opts.traced} traced), {opts.churners} churners x {opts.concurrency} sessions, "
            f"churn {opts.churn_seconds:.0f} s in rounds of {opts.round_seconds:.0f} s; TTLs <= {ttl_max:g} s")

        sampler = asyncio.ensure_future(sampler_loop(hubs, t0, opts.sample_seconds, stop_sampling))
        churn_start = time.monotonic()
        churn_end = churn_start + opts.churn_seconds
        warm_end = churn_start + opts.warmup * opts.churn_seconds
        report["churn_start_t"] = churn_start - t0
        report["warmup_end_t"] = warm_end - t0
        news = int(opts.news_rate * 0.5 * opts.churn_seconds)  # ends mid-churn even if publish() is slowed
        if news:
            await hubs[0].proc.send("publish", topic="soak.news", payload="news", count=news, rate=opts.news_rate)
        lifetime_s = opts.churner_rounds * (opts.round_seconds + 10) + 60
        seeds = iter(range(opts.seed * 1000, opts.seed * 1000 + 100_000))

        async def new_churner(k: int) -> Churner:
            churn["churner_processes"] += 1
            return await Churner.spawn(f"c{k}", [h.proc for h in hubs], concurrency=opts.concurrency,
                                        seed=next(seeds), max_seconds=lifetime_s, env=env, script=str(script))

        churners = [await new_churner(k) for k in range(opts.churners)]
        for k, c in enumerate(churners):  # stagger retirements
            c.rounds = (k * opts.churner_rounds) // max(1, opts.churners)
        retirements = 0
        baseline_taken = False
        max_rounds = int(opts.churn_seconds / opts.round_seconds) + 10
        for rnd in range(max_rounds):
            if time.monotonic() >= churn_end:
                break
            seconds = min(opts.round_seconds, max(0.5, churn_end - time.monotonic()))
            for c in churners:
                await c.send("round", seconds=seconds)
            for c in churners:
                done = await c.expect("round_done", seconds + 60)
                c.rounds += 1
                for hub_i, n in done["cycles"].items():
                    hubs[int(hub_i)].cycles += n
                    churn["cycles"] += n
                for name, n in done["errors"].items():
                    churn["errors"][name] = churn["errors"].get(name, 0) + n
                churn["cancelled_mid_call"] += done["cancelled_mid_call"]
                churn["echo_mismatch"] += done["echo_mismatch"]
            churn["rounds"] = rnd + 1
            for k, c in enumerate(churners):  # retire old churners; every other one crashes mid-call
                if c.rounds >= opts.churner_rounds and time.monotonic() < churn_end - opts.round_seconds:
                    crash = retirements % 2 == 1
                    retirements += 1
                    await c.finish(crash=crash)
                    churn["crashed_churners"] += int(crash)
                    churners[k] = await new_churner(churn["churner_processes"])
            quiet = await wait_quiet(hubs, base_conns, timeout=ttl_max + 2)
            take_baseline = not baseline_taken and time.monotonic() >= warm_end
            for hub in hubs:
                # RSS right after a malloc_trim, as the node's own periodic trim leaves it: the
                # 30 s trim sawtooth is free memory on its way back (the untrimmed RSS is kept too)
                cp = await memory(hub, baseline=take_baseline and hub.traced, trim=True)
                cp.update(t=time.monotonic() - t0, cycles=hub.cycles, quiet=quiet,
                          phase="churn" if time.monotonic() < warm_end else "measured")
                hub.checkpoints.append(cp)
            baseline_taken = baseline_taken or take_baseline
            if not opts.quiet and rnd % 5 == 4:
                say(f"  t={time.monotonic() - churn_start:5.0f} s  cycles {churn['cycles']:6d}  "
                    + "  ".join(f"{h.proc.name} rss {h.checkpoints[-1]['rss_bytes'] / 2**20:.1f} MiB" for h in hubs))
        churn_stopped = time.monotonic()
        for c in churners:
            await c.finish(crash=False)
        churners = []
        report["churn_seconds"] = churn_stopped - churn_start
        report["churn_end_t"] = churn_stopped - t0
        report["churn_end_monotonic"] = churn_stopped  # the hubs' clock (CLOCK_MONOTONIC), to line up their logs

        # recovery: every container back to its pre-churn size within 2x the longest TTL
        recovery: list[dict[str, Any]] = []
        for i, hub in enumerate(hubs):
            deadline = churn_stopped + recovery_limit
            back_at: dict[str, float | None] = {k: None for k in baseline[i]}
            state: dict[str, int] = {}
            while True:
                state = health_state(json.loads(await http_get(hub.http, "/health")))
                now = time.monotonic()
                for name in set(back_at) | set(state):
                    if state.get(name, 0) <= baseline[i].get(name, 0):
                        if back_at.get(name) is None:
                            back_at[name] = now - churn_stopped
                    else:
                        back_at[name] = None
                if all(v is not None for v in back_at.values()) or now > deadline:
                    break
                await asyncio.sleep(0.2)
            not_back = {n: {"baseline": baseline[i].get(n, 0), "now": state.get(n, 0)}
                        for n, v in back_at.items() if v is None}
            recovery.append({"hub": hub.proc.name, "baseline": baseline[i], "final": state, "not_back": not_back,
                             "seconds": max((v or 0.0) for v in back_at.values()) if not not_back else None})
        stop_sampling.set()
        await sampler
        sampler = None
        for hub in hubs:
            cp = await memory(hub, top=25 if hub.traced else 0, trim=True)
            cp.update(t=time.monotonic() - t0, cycles=hub.cycles, quiet=True, phase="recovered")
            hub.checkpoints.append(cp)
    finally:
        stop_sampling.set()
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(BaseException):
                await sampler
        for c in churners:
            with contextlib.suppress(Exception):
                await c.finish(crash=False)
        codes = []
        for hub in hubs:
            codes.append(await hub.proc.stop())
        report["hub_exit_codes"] = codes
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)

    report["churn"] = churn
    report["recovery"] = recovery
    report["cycles_per_second"] = churn["cycles"] / max(1e-9, report["churn_seconds"])
    report["hubs"] = [hub_figures(h) for h in hubs]
    report["verdict"] = verdict(report, recovery_limit, rss_gate=opts.minutes >= RSS_GATE_MINUTES)
    report["wall_seconds"] = time.monotonic() - t0
    write_report(report, hubs, opts)
    print_report(report, say)
    return report
