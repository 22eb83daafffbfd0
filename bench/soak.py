#!/usr/bin/env python3
"""Soak harness: long-lived node processes under churn, sampled until they prove they hold.

    python bench/soak.py --minutes 2          # the version `make test` runs (tests/test_soak.py)
    python bench/soak.py --minutes 30         # the long run (also `make soak`, QUICMESH_SOAK=1)

The code is the package beside this file, ``bench/soaklib`` (its docstring tells the theory of
operation); this script puts that directory on ``sys.path`` and runs it. Churner processes run
this same script (or its copy in the run's snapshot) with ``churner``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soaklib import (
    RSS_GATE_MINUTES,
    RSS_LIMIT,
    SOAK_ENV,
    TTL_KEYS,
    SoakOptions,
    ls_slope,
    main,
    parse_metrics,
    run_soak,
    theil_sen,
    ttl_bound,
    window_slopes,
)

__all__ = [
    "RSS_GATE_MINUTES",
    "RSS_LIMIT",
    "SOAK_ENV",
    "TTL_KEYS",
    "SoakOptions",
    "ls_slope",
    "main",
    "parse_metrics",
    "run_soak",
    "theil_sen",
    "ttl_bound",
    "window_slopes",
]

if __name__ == "__main__":
    sys.exit(main())
