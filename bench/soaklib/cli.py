"""``python bench/soak.py [options]`` and ``python bench/soak.py churner ...`` (internal)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from .churn import run_churner
from .run import run_soak
from .settings import SoakOptions

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Soak harness: long-lived node processes under churn, sampled until they prove they hold.")
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("churner", help="(internal) a churner process")
    c.add_argument("--hubs", required=True)
    c.add_argument("--ids", required=True)
    c.add_argument("--concurrency", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-seconds", type=float, default=600.0)
    d = SoakOptions()
    p.add_argument("--minutes", type=float, default=d.minutes, help="whole run, minutes (churn is ~20 s less)")
    p.add_argument("--hubs", type=int, default=d.hubs, help="long-lived node processes")
    p.add_argument("--traced", type=int, default=d.traced, help="hubs running tracemalloc (the first ones)")
    p.add_argument("--churners", type=int, default=d.churners, help="churner processes")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="sessions at once per churner")
    p.add_argument("--round-seconds", type=float, default=d.round_seconds)
    p.add_argument("--churner-rounds", type=int, default=d.churner_rounds, help="rounds before a churner is replaced")
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of the churn time excluded from slopes")
    p.add_argument("--sample-seconds", type=float, default=d.sample_seconds)
    p.add_argument("--news-rate", type=float, default=d.news_rate, help="hub0's soak.news messages per second")
    p.add_argument("--out", default=d.out)
    p.add_argument("--tag", default="", help="file name tag (default: the minutes)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-snapshot", action="store_true",
                   help="run hubs and churners from the checkout itself, not from a copy taken at the start")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for hubs and churners, e.g. MALLOC_MMAP_THRESHOLD_=131072 (repeat)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a soak (or, with ``churner``, one churner process); 0 when the verdict passes."""
    args = _parser().parse_args(argv)
    if args.mode == "churner":
        return asyncio.run(run_churner(args))
    opts = SoakOptions(minutes=args.minutes, hubs=args.hubs, traced=args.traced, churners=args.churners,
                       concurrency=args.concurrency, round_seconds=args.round_seconds,
                       churner_rounds=args.churner_rounds, warmup=args.warmup, sample_seconds=args.sample_seconds,
                       news_rate=args.news_rate, out=args.out, tag=args.tag, seed=args.seed,
                       snapshot=not args.no_snapshot,
                       extra_env=dict(e.partition("=")[::2] for e in args.env))
    report = asyncio.run(run_soak(opts))
    return 0 if report["verdict"]["pass"] else 1
